/**
 * Watching a mounted or edited file through its directory. Editors save by writing a new file
 * and renaming it, and Kubernetes updates a mounted ConfigMap or Secret by swapping a `..data`
 * symlink, so the file itself is not a reliable thing to watch: its directory is. A burst of
 * events (one save is often several) becomes one call, `debounceMs` after the last of them.
 */
import { watch } from 'node:fs';

export interface DirectoryWatch {
  close(): void;
}

/** Calls `onSettled` once the changes in `dir` that `relevant` accepts have been quiet for `debounceMs`. */
export function watchDirectoryDebounced(dir: string, relevant: (name: string) => boolean, debounceMs: number, onSettled: () => void): DirectoryWatch {
  let timer: NodeJS.Timeout | undefined;
  const watcher = watch(dir, (_event, name) => {
    if (name !== null && !relevant(name)) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      onSettled();
    }, debounceMs);
  });
  return {
    close() {
      clearTimeout(timer);
      watcher.close();
    },
  };
}
