/**
 * `evolith metering`: what each function of a running serverless deployment was used and what
 * that costs under the published price model, beside what one always-on process per function
 * would cost for the same period. Read from the control plane (operator credential in the
 * deployment record, as `evolith status` does).
 */
import { ConfigError } from '../../kernel/errors.js';
import { formatReport, type alwaysOnCost, type MeteringReport } from '../../serverless/metering.js';
import { findDeployments } from '../deployment-record.js';

export async function deploymentMetering(appDir: string, dataDir: string | undefined, json: boolean): Promise<string> {
  const records = findDeployments(appDir, dataDir).filter((r) => r.architecture === 'serverless');
  if (records.length === 0) {
    throw new ConfigError(
      `no running serverless deployment of ${appDir} found${dataDir ? ` on ${dataDir}` : ''}; start one with \`evolith run ${appDir} --arch serverless\``,
    );
  }
  const out: string[] = [];
  for (const r of records) {
    if (!r.registryUrl || !r.operatorToken) {
      out.push(`serverless deployment on ${r.dataDir} (pid ${r.pid}) is still starting`);
      continue;
    }
    let body: { report: MeteringReport; alwaysOn: ReturnType<typeof alwaysOnCost> };
    try {
      const res = await fetch(`${r.registryUrl}/metering`, { headers: { authorization: `Bearer ${r.operatorToken}` } });
      if (res.status !== 200) throw new Error(`it answered HTTP ${res.status}`);
      body = (await res.json()) as typeof body;
    } catch (err) {
      throw new ConfigError(`the control plane at ${r.registryUrl} (pid ${r.pid}) does not answer: ${(err as Error).message}`);
    }
    out.push(json ? JSON.stringify(body, null, 2) + '\n' : `serverless at ${r.url}, data ${r.dataDir}\n${formatReport(body.report, body.alwaysOn)}`);
  }
  return out.join('\n');
}
