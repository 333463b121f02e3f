/**
 * The shapes shared by the Kubernetes generator's parts: an object as it is written, the
 * labels every object carries, and the fixed names and paths of the pod contract (what a pod
 * of the app's image expects to find where).
 */

/** One Kubernetes object as it is written to YAML: plain data, keys in the order they are written. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: K8sMetadata;
  [field: string]: unknown;
}

export interface K8sMetadata {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** The architectures a cluster runs; `evolith run`'s monolith has no cluster form. */
export const CLUSTER_ARCHITECTURES = ['microservices', 'mesh', 'serverless'] as const;
export type ClusterArchitecture = (typeof CLUSTER_ARCHITECTURES)[number];
export type ClusterTransport = 'tcp' | 'http2';

/** Paths inside the image and the pod (the image layout and the mounts). */
export const POD = Object.freeze({
  entry: '/app/pod.mjs',
  appDir: '/app/app',
  topologyDir: '/etc/evolith',
  topologyFile: '/etc/evolith/evolith.yaml',
  credentialsDir: '/var/run/evolith',
  credentialsFile: '/var/run/evolith/bundle.json',
  /** The non-root user and group every app container runs as (the image's USER). */
  uid: 10001,
});

/** Ports of the pod contract. */
export const PORTS = Object.freeze({
  /** A group's RPC listener (tcp, and http2 in the mesh). */
  rpc: 7000,
  /** The probe listener beside a tcp RPC listener, and a waker's. */
  probes: 8081,
  /** The edge; and a Knative function's single listener (Knative's default). */
  http: 8080,
});

export const TOPOLOGY_CONFIGMAP = 'evolith-topology';
export const BACKENDS_SECRET = 'evolith-backends';
export const EDGE_WORKLOAD = 'edge';

/** The Secret holding a workload's credential bundle. */
export function credentialsSecret(workload: string): string {
  return `evolith-credentials-${workload}`;
}

/** The waker of a serverless function. */
export function wakerName(group: string): string {
  return `${group}-wakeups`;
}

/** Labels of every object; `name` is the workload's, or the app's for objects of the whole app. */
export function commonLabels(app: string, name: string): Record<string, string> {
  return {
    'app.kubernetes.io/name': name,
    'app.kubernetes.io/part-of': app,
    'app.kubernetes.io/managed-by': 'evolith',
  };
}

/** Milliseconds as a duration string Istio and Knative read: `2s`, `250ms`. */
export function duration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}
