/**
 * Reading Kubernetes manifests for the local cluster simulation: a kustomize directory (its
 * `resources:` list, followed into nested directories), multi-document YAML files, and the
 * kustomization's `namespace` applied to objects that name none, as `kubectl apply -k` does.
 *
 * Only the fields the simulation runs are typed; everything else is kept as read.
 */
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';

/** A Kubernetes object as read; `kind`, `metadata.name` and (after namespacing) `metadata.namespace` are always set. */
export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  spec?: any;
  data?: Record<string, string>;
  stringData?: Record<string, string>;
  [field: string]: unknown;
}

export interface ObjectMeta {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    secretKeyRef?: { name: string; key: string; optional?: boolean };
    configMapKeyRef?: { name: string; key: string; optional?: boolean };
    fieldRef?: { fieldPath: string };
  };
}

export interface Probe {
  httpGet?: { path?: string; port: number | string; host?: string; scheme?: string; httpHeaders?: { name: string; value: string }[] };
  tcpSocket?: { port: number | string; host?: string };
  exec?: { command: string[] };
  initialDelaySeconds?: number;
  periodSeconds?: number;
  timeoutSeconds?: number;
  failureThreshold?: number;
  successThreshold?: number;
}

export interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  workingDir?: string;
  env?: EnvVar[];
  envFrom?: { configMapRef?: { name: string; optional?: boolean }; secretRef?: { name: string; optional?: boolean }; prefix?: string }[];
  ports?: { name?: string; containerPort: number; protocol?: string }[];
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean; subPath?: string }[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  securityContext?: { runAsUser?: number; runAsGroup?: number };
}

export interface Volume {
  name: string;
  configMap?: { name: string; items?: { key: string; path: string }[]; optional?: boolean };
  secret?: { secretName: string; items?: { key: string; path: string }[]; optional?: boolean };
  emptyDir?: Record<string, unknown>;
}

export interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: Volume[];
  serviceAccountName?: string;
  terminationGracePeriodSeconds?: number;
  securityContext?: { runAsUser?: number; runAsGroup?: number; fsGroup?: number; runAsNonRoot?: boolean };
  restartPolicy?: string;
}

export interface PodTemplate {
  metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> };
  spec: PodSpec;
}

/** A problem in the manifests, naming the file and object. */
export class ManifestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ManifestError';
  }
}

const KUSTOMIZATION_FILES = ['kustomization.yaml', 'kustomization.yml', 'Kustomization'];
/** Kustomization fields the reader understands; any other (generators, patches, images) changes
 * what would be applied, so reading on without it would run something else than the cluster would. */
const KNOWN_KUSTOMIZATION_FIELDS = new Set(['apiVersion', 'kind', 'namespace', 'resources']);

/**
 * Reads every object that `kubectl apply -k <path>` would apply (or `-f` when `path` is a YAML
 * file), in file order.
 */
export async function loadManifests(path: string): Promise<KubeObject[]> {
  const info = await stat(path).catch(() => undefined);
  if (!info) throw new ManifestError(`manifests not found: ${path}`);
  if (info.isFile()) return readYamlObjects(path);
  return readKustomization(resolve(path));
}

async function readKustomization(dir: string): Promise<KubeObject[]> {
  let file: string | undefined;
  for (const name of KUSTOMIZATION_FILES) {
    const candidate = join(dir, name);
    if (await stat(candidate).catch(() => undefined)) {
      file = candidate;
      break;
    }
  }
  if (!file) throw new ManifestError(`${dir} holds no kustomization.yaml`);
  const docs = await readYamlDocuments(file);
  const k = (docs[0] ?? {}) as Record<string, unknown>;
  const unknown = Object.keys(k).filter((key) => !KNOWN_KUSTOMIZATION_FIELDS.has(key));
  if (unknown.length > 0) {
    throw new ManifestError(`${file}: the simulation does not apply these kustomization fields: ${unknown.join(', ')}`);
  }
  const resources = k['resources'] ?? [];
  if (!Array.isArray(resources) || resources.some((r) => typeof r !== 'string')) {
    throw new ManifestError(`${file}: resources must be a list of paths`);
  }
  const objects: KubeObject[] = [];
  for (const resource of resources as string[]) {
    if (/^[a-z]+:\/\//.test(resource)) throw new ManifestError(`${file}: remote resource ${resource} is not read`);
    const path = join(dir, resource);
    const info = await stat(path).catch(() => undefined);
    if (!info) throw new ManifestError(`${file}: resource ${resource} does not exist`);
    objects.push(...(info.isDirectory() ? await readKustomization(path) : await readYamlObjects(path)));
  }
  const namespace = k['namespace'];
  if (typeof namespace === 'string' && namespace) {
    // kustomize's namespace transformer sets it on every namespaced object (Namespace itself is cluster-scoped).
    for (const o of objects) if (o.kind !== 'Namespace') o.metadata.namespace = namespace;
  }
  return objects;
}

async function readYamlDocuments(file: string): Promise<unknown[]> {
  const text = await readFile(file, 'utf8');
  const docs = parseAllDocuments(text);
  const out: unknown[] = [];
  for (const doc of docs) {
    if (doc.errors.length > 0) {
      throw new ManifestError(`${file}: invalid YAML: ${doc.errors.map((e) => e.message).join('; ')}`);
    }
    const value = doc.toJS();
    if (value !== null && value !== undefined) out.push(value);
  }
  return out;
}

async function readYamlObjects(file: string): Promise<KubeObject[]> {
  const out: KubeObject[] = [];
  for (const value of await readYamlDocuments(file)) {
    const o = value as Partial<KubeObject>;
    if (o.kind === 'List' && Array.isArray((o as { items?: unknown }).items)) {
      for (const item of (o as { items: KubeObject[] }).items) out.push(checkObject(item, file));
      continue;
    }
    out.push(checkObject(o, file));
  }
  return out;
}

function checkObject(o: Partial<KubeObject>, file: string): KubeObject {
  const problems: string[] = [];
  if (typeof o !== 'object' || o === null) throw new ManifestError(`${file}: a document is not an object`);
  if (typeof o.apiVersion !== 'string') problems.push('apiVersion missing');
  if (typeof o.kind !== 'string') problems.push('kind missing');
  if (typeof o.metadata?.name !== 'string' || !o.metadata.name) problems.push('metadata.name missing');
  if (problems.length > 0) {
    throw new ManifestError(`${file}: object ${o.kind ?? '?'}/${o.metadata?.name ?? '?'}: ${problems.join(', ')}`);
  }
  return o as KubeObject;
}

/** Decoded values of a Secret (base64 `data`, then plain `stringData` on top, as the API server merges them). */
export function secretValues(secret: KubeObject): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(secret.data ?? {})) out[k] = Buffer.from(String(v), 'base64').toString('utf8');
  for (const [k, v] of Object.entries(secret.stringData ?? {})) out[k] = String(v);
  return out;
}

/** Values of a ConfigMap (`data`, plus base64 `binaryData`). */
export function configMapValues(configMap: KubeObject): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(configMap.data ?? {})) out[k] = String(v);
  const binary = (configMap as { binaryData?: Record<string, string> }).binaryData ?? {};
  for (const [k, v] of Object.entries(binary)) out[k] = Buffer.from(v, 'base64').toString('utf8');
  return out;
}

/** Whether `labels` match a selector (`matchLabels` form, or the plain map a Service uses). */
export function matchesSelector(labels: Record<string, string> | undefined, selector: Record<string, string> | undefined): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}
