/**
 * Checks of generated objects before anyone applies them.
 *
 * `validateObjects` checks each object against its kind's OpenAPI schema (the
 * kubernetes-models packages and their Istio and Knative CRD counterparts, looked up by
 * apiVersion and kind). Those packages are development dependencies: an installed Evolith
 * without them says the objects were not validated rather than pretend they were. An object
 * of a kind with no model fails: an unchecked object is not a valid one.
 *
 * `checkWorkloads` is our own lint over what schemas cannot see: probes, resources and the
 * security context of every container, and the references between objects (selectors, Secrets,
 * ConfigMaps, named ports).
 */
import type { K8sObject } from './objects.js';

// The models type their input precisely; here every object is plain data of a kind looked up at run time.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type ModelClass = new (data: any) => { validate(): void };

/** Where each kind's model lives: its package, the module under it, and the class it exports (the kind). */
const MODELS: Record<string, { pkg: string; module: string }> = {
  'v1/Namespace': { pkg: 'kubernetes-models', module: 'v1/Namespace' },
  'v1/ConfigMap': { pkg: 'kubernetes-models', module: 'v1/ConfigMap' },
  'v1/Secret': { pkg: 'kubernetes-models', module: 'v1/Secret' },
  'v1/Service': { pkg: 'kubernetes-models', module: 'v1/Service' },
  'v1/ServiceAccount': { pkg: 'kubernetes-models', module: 'v1/ServiceAccount' },
  'apps/v1/Deployment': { pkg: 'kubernetes-models', module: 'apps/v1/Deployment' },
  'apps/v1/StatefulSet': { pkg: 'kubernetes-models', module: 'apps/v1/StatefulSet' },
  'autoscaling/v2/HorizontalPodAutoscaler': { pkg: 'kubernetes-models', module: 'autoscaling/v2/HorizontalPodAutoscaler' },
  'policy/v1/PodDisruptionBudget': { pkg: 'kubernetes-models', module: 'policy/v1/PodDisruptionBudget' },
  'networking.k8s.io/v1/Ingress': { pkg: 'kubernetes-models', module: 'networking.k8s.io/v1/Ingress' },
  'networking.k8s.io/v1/NetworkPolicy': { pkg: 'kubernetes-models', module: 'networking.k8s.io/v1/NetworkPolicy' },
  'security.istio.io/v1beta1/PeerAuthentication': { pkg: '@kubernetes-models/istio', module: 'security.istio.io/v1beta1/PeerAuthentication' },
  'security.istio.io/v1/AuthorizationPolicy': { pkg: '@kubernetes-models/istio', module: 'security.istio.io/v1/AuthorizationPolicy' },
  'security.istio.io/v1/RequestAuthentication': { pkg: '@kubernetes-models/istio', module: 'security.istio.io/v1/RequestAuthentication' },
  'networking.istio.io/v1beta1/DestinationRule': { pkg: '@kubernetes-models/istio', module: 'networking.istio.io/v1beta1/DestinationRule' },
  'networking.istio.io/v1beta1/VirtualService': { pkg: '@kubernetes-models/istio', module: 'networking.istio.io/v1beta1/VirtualService' },
  'serving.knative.dev/v1/Service': { pkg: '@kubernetes-models/knative', module: 'serving.knative.dev/v1/Service' },
  'sources.knative.dev/v1/ContainerSource': { pkg: '@kubernetes-models/knative', module: 'sources.knative.dev/v1/ContainerSource' },
};

/** Loads a module by specifier; tests stand in for a missing package with their own. */
export type ModuleLoader = (specifier: string) => Promise<Record<string, unknown>>;

const importModule: ModuleLoader = (specifier) => import(specifier) as Promise<Record<string, unknown>>;

export interface SchemaValidation {
  /** False when a model package is not installed: nothing was checked. */
  readonly validated: boolean;
  /** The packages that would have been needed (when `validated` is false). */
  readonly missing: readonly string[];
  /** `Kind/name: problem`, one per schema problem. */
  readonly problems: readonly string[];
}

/** The name an object is reported by. */
export function objectId(o: K8sObject): string {
  return `${o.kind}/${o.metadata?.name ?? '(unnamed)'}`;
}

/** Every object checked against its kind's schema. */
export async function validateObjects(objects: readonly K8sObject[], load: ModuleLoader = importModule): Promise<SchemaValidation> {
  const problems: string[] = [];
  const missing = new Set<string>();
  const loaded = new Map<string, ModelClass>();
  for (const o of objects) {
    const key = `${o.apiVersion}/${o.kind}`;
    const model = MODELS[key];
    if (model === undefined) {
      problems.push(`${objectId(o)}: no schema is known for ${o.kind} of ${o.apiVersion}, so it cannot be validated`);
      continue;
    }
    let Model = loaded.get(key);
    if (Model === undefined) {
      try {
        Model = (await load(`${model.pkg}/${model.module}`))[o.kind] as ModelClass | undefined;
        if (typeof Model !== 'function') throw new TypeError(`${model.pkg}/${model.module} exports no ${o.kind}`);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND') {
          missing.add(model.pkg);
          continue;
        }
        throw err;
      }
      loaded.set(key, Model);
    }
    try {
      new Model(structuredClone(o)).validate();
    } catch (err) {
      const e = err as { errors?: { instancePath?: string; message?: string }[]; message?: string };
      if (Array.isArray(e.errors) && e.errors.length > 0) {
        for (const x of e.errors) problems.push(`${objectId(o)}: ${(x.instancePath ?? '').replace(/^\//, '').replace(/\//g, '.') || '(object)'} ${x.message ?? 'is invalid'}`);
      } else problems.push(`${objectId(o)}: ${e.message ?? String(err)}`);
    }
  }
  if (missing.size > 0) return { validated: false, missing: [...missing].sort(), problems };
  return { validated: true, missing: [], problems };
}

// ---------------------------------------------------------------------------------------------
// Our own lint

interface Container {
  name?: string;
  ports?: { name?: string; containerPort?: number }[];
  livenessProbe?: Probe;
  readinessProbe?: Probe;
  startupProbe?: Probe;
  resources?: { requests?: Record<string, unknown>; limits?: Record<string, unknown> };
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number; readOnlyRootFilesystem?: boolean; allowPrivilegeEscalation?: boolean };
  env?: { name: string; valueFrom?: { secretKeyRef?: { name: string }; configMapKeyRef?: { name: string } } }[];
  envFrom?: { secretRef?: { name: string }; configMapRef?: { name: string } }[];
}

interface Probe {
  httpGet?: { port?: number | string };
  tcpSocket?: { port?: number | string };
  grpc?: { port?: number };
}

interface PodSpec {
  containers?: Container[];
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number };
  volumes?: { name: string; secret?: { secretName: string }; configMap?: { name: string } }[];
}

interface PodTemplate {
  metadata?: { labels?: Record<string, string> };
  spec?: PodSpec;
}

/** The pod template of a workload object, and whether Knative serves it (which needs no liveness probe). */
function podTemplate(o: K8sObject): { template: PodTemplate; knative: boolean } | undefined {
  const spec = o.spec as { template?: PodTemplate } | undefined;
  if (spec?.template === undefined) return undefined;
  if (o.kind === 'Deployment' || o.kind === 'StatefulSet' || o.kind === 'ContainerSource') return { template: spec.template, knative: false };
  if (o.kind === 'Service' && o.apiVersion.startsWith('serving.knative.dev/')) return { template: spec.template, knative: true };
  return undefined;
}

/**
 * What a schema does not catch: every problem, `Kind/name: problem`. Empty when every container
 * has a name, probes, resources and a locked-down security context, and every reference resolves.
 */
export function checkWorkloads(objects: readonly K8sObject[]): string[] {
  const problems: string[] = [];
  const secrets = new Set(objects.filter((o) => o.kind === 'Secret' && o.apiVersion === 'v1').map((o) => o.metadata.name));
  const configMaps = new Set(objects.filter((o) => o.kind === 'ConfigMap' && o.apiVersion === 'v1').map((o) => o.metadata.name));
  const pods: { owner: string; labels: Record<string, string>; containers: Container[] }[] = [];

  for (const o of objects) {
    const found = podTemplate(o);
    if (found === undefined) continue;
    const id = objectId(o);
    const { template, knative } = found;
    const pod = template.spec ?? {};
    const containers = pod.containers ?? [];
    pods.push({ owner: id, labels: template.metadata?.labels ?? {}, containers });
    if (containers.length === 0) problems.push(`${id}: the pod has no container`);
    for (const v of pod.volumes ?? []) {
      if (v.secret && !secrets.has(v.secret.secretName)) problems.push(`${id}: volume ${v.name} mounts Secret ${v.secret.secretName}, which is not generated`);
      if (v.configMap && !configMaps.has(v.configMap.name)) problems.push(`${id}: volume ${v.name} mounts ConfigMap ${v.configMap.name}, which is not generated`);
    }
    containers.forEach((c, i) => {
      const at = `${id}: container ${c.name ?? `#${i}`}`;
      if (!c.name) problems.push(`${id}: container #${i} has no name`);
      if (!knative && c.livenessProbe === undefined) problems.push(`${at} has no liveness probe`);
      if (c.readinessProbe === undefined) problems.push(`${at} has no readiness probe`);
      for (const side of ['requests', 'limits'] as const) {
        const r = c.resources?.[side];
        if (r?.cpu === undefined || r?.memory === undefined) problems.push(`${at} has no cpu and memory ${side}`);
      }
      const sc = c.securityContext ?? {};
      const runAsNonRoot = sc.runAsNonRoot ?? pod.securityContext?.runAsNonRoot;
      const runAsUser = sc.runAsUser ?? pod.securityContext?.runAsUser;
      if (runAsNonRoot !== true) problems.push(`${at} may run as root (runAsNonRoot is not true)`);
      else if (runAsUser === 0) problems.push(`${at} runs as root (runAsUser 0)`);
      if (sc.readOnlyRootFilesystem !== true) problems.push(`${at} has a writable root filesystem (readOnlyRootFilesystem is not true)`);
      if (sc.allowPrivilegeEscalation !== false) problems.push(`${at} allows privilege escalation (allowPrivilegeEscalation is not false)`);
      const portNames = new Set((c.ports ?? []).map((p) => p.name).filter((n): n is string => n !== undefined));
      const portNumbers = new Set((c.ports ?? []).map((p) => p.containerPort));
      for (const kind of ['livenessProbe', 'readinessProbe', 'startupProbe'] as const) {
        const probe = c[kind];
        const port = probe?.httpGet?.port ?? probe?.tcpSocket?.port ?? probe?.grpc?.port;
        if (port === undefined) continue;
        if (typeof port === 'string' ? !portNames.has(port) : !portNumbers.has(port)) problems.push(`${at}: ${kind} targets port ${port}, which the container does not declare`);
      }
      for (const e of c.env ?? []) {
        const ref = e.valueFrom?.secretKeyRef?.name;
        if (ref !== undefined && !secrets.has(ref)) problems.push(`${at}: env ${e.name} reads Secret ${ref}, which is not generated`);
        const cm = e.valueFrom?.configMapKeyRef?.name;
        if (cm !== undefined && !configMaps.has(cm)) problems.push(`${at}: env ${e.name} reads ConfigMap ${cm}, which is not generated`);
      }
      for (const e of c.envFrom ?? []) {
        if (e.secretRef && !secrets.has(e.secretRef.name)) problems.push(`${at}: envFrom reads Secret ${e.secretRef.name}, which is not generated`);
        if (e.configMapRef && !configMaps.has(e.configMapRef.name)) problems.push(`${at}: envFrom reads ConfigMap ${e.configMapRef.name}, which is not generated`);
      }
    });
  }

  // Services: the selector picks some pod, and a named targetPort is a port of the pods it picks.
  for (const o of objects) {
    if (o.kind !== 'Service' || o.apiVersion !== 'v1') continue;
    const spec = o.spec as { selector?: Record<string, string>; ports?: { name?: string; port: number; targetPort?: number | string }[] } | undefined;
    const selector = spec?.selector;
    if (selector === undefined || Object.keys(selector).length === 0) continue;
    const picked = pods.filter((p) => Object.entries(selector).every(([k, v]) => p.labels[k] === v));
    const id = objectId(o);
    if (picked.length === 0) {
      problems.push(`${id}: its selector ${Object.entries(selector).map(([k, v]) => `${k}=${v}`).join(',')} matches no pod template`);
      continue;
    }
    for (const port of spec?.ports ?? []) {
      const target = port.targetPort ?? port.port;
      for (const p of picked) {
        const has = p.containers.some((c) => (c.ports ?? []).some((cp) => (typeof target === 'string' ? cp.name === target : cp.containerPort === target)));
        if (!has) problems.push(`${id}: port ${port.name ?? port.port} targets ${target}, which no container of ${p.owner} declares`);
      }
    }
  }
  return problems;
}
