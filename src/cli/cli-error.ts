/** A mistake of the person running the command: printed as one line, exit code 2. */
export class CliError extends Error {}
