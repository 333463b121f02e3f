/**
 * A process that owns a simulation and then goes away without stopping it: `exit` calls
 * process.exit (the exit handler must clean up), `hang` waits to be killed with SIGKILL (the next
 * simulation's start must remove what it left). Prints the simulation's state directory and its
 * pods' pids as one JSON line once they are ready.
 */
import { ClusterSimulation } from './simulation.js';

const [mode, manifests, imageDir, image] = process.argv.slice(2);
const sim = await ClusterSimulation.start({ appImages: [image!], imageDir: imageDir!, timeScale: 0.1 });
await sim.apply(manifests!);
await sim.waitReady(30_000);
console.log(JSON.stringify({ stateDir: sim.stateDir, pids: sim.pods().map((p) => p.pid) }));
if (mode === 'exit') process.exit(0);
setInterval(() => undefined, 60_000);
