/**
 * Errors that end a command with a one-line message and a documented exit code.
 *
 * The command line prints `sinkstream: <message>` for these and exits with `exitCode`.
 * Any other error is a bug and exits with 1 (the stack trace is printed with `--debug`).
 */

/** Exit codes of the command line, documented in the README. */
export const ExitCode = {
  ok: 0,
  internal: 1,
  usage: 2,
  model: 3,
  input: 4,
  network: 5,
  state: 6,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** An error caused by the user's input, options or files, not by a bug. */
export class SinkstreamError extends Error {
  readonly exitCode: ExitCodeValue;

  constructor(message: string, exitCode: ExitCodeValue) {
    super(message);
    this.name = "SinkstreamError";
    this.exitCode = exitCode;
  }
}

/** A command-line option or argument that is invalid. */
export class UsageError extends SinkstreamError {
  constructor(message: string) {
    super(message, ExitCode.usage);
    this.name = "UsageError";
  }
}

/** A model that is missing, malformed or unsupported. */
export class ModelError extends SinkstreamError {
  constructor(message: string) {
    super(message, ExitCode.model);
    this.name = "ModelError";
  }
}

/** A download from the Hugging Face hub (or a mirror) that failed. */
export class NetworkError extends SinkstreamError {
  constructor(message: string) {
    super(message, ExitCode.network);
    this.name = "NetworkError";
  }
}

/** A saved stream state that is unreadable, damaged or made for another model or cache. */
export class StateError extends SinkstreamError {
  constructor(message: string) {
    super(message, ExitCode.state);
    this.name = "StateError";
  }
}

/** Input that cannot be read: a missing file to follow, a read that failed. */
export class InputError extends SinkstreamError {
  constructor(message: string) {
    super(message, ExitCode.input);
    this.name = "InputError";
  }
}
