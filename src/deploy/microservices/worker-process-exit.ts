/**
 * The exit code by which a worker says it cannot start (EX_CONFIG in sysexits): a bad
 * configuration, a port in use, a database it cannot reach. Its supervisor does not restart it
 * (it would fail again); its last line on stderr, `evolith: <why>`, says why.
 */
export const FATAL_EXIT = 78;
