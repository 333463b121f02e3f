import type { Socket } from 'node:net';

/** Corked bytes beyond which a batch is written out without waiting for the end of the tick. */
const FLUSH_BYTES = 16 * 1024;

/**
 * Writes frames to a socket in batches: frames written in the same tick leave in one write (one
 * syscall) instead of one each, and big batches go out in slices, so the peer can start on the
 * first frames while this side still works on the rest (both ends busy at once, not in turns).
 */
export class BatchedWriter {
  private corked = false;
  private corkedBytes = 0;

  constructor(private readonly socket: Socket) {}

  write(frame: Buffer): void {
    const socket = this.socket;
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(flush, this);
    }
    socket.write(frame);
    this.corkedBytes += frame.length;
    if (this.corkedBytes >= FLUSH_BYTES) {
      this.corkedBytes = 0;
      socket.uncork();
      socket.cork();
    }
  }

  /** @internal */
  flush(): void {
    this.corked = false;
    this.corkedBytes = 0;
    this.socket.uncork();
  }
}

function flush(writer: BatchedWriter): void {
  writer.flush();
}
