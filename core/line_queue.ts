/**
 * A bounded queue between a producer that reads input and a consumer that ingests it, so
 * memory stays bounded when input arrives faster than the model runs.
 *
 * In blocking mode `push` waits while the queue is full, which stops the producer reading,
 * and the pipe upstream fills and blocks the writer. In drop mode `push` discards the item at
 * once when the queue is full and counts it, so the producer never stalls.
 */

/** Result of {@linkcode BoundedQueue.take}: an item, the end of input, or a timeout. */
export type Taken<T> = { kind: "item"; item: T } | { kind: "end" } | { kind: "timeout" };

/** Options of {@linkcode BoundedQueue}. */
export interface BoundedQueueOptions {
  /** Maximum number of items waiting. */
  capacity: number;
  /** Discard items pushed while the queue is full instead of waiting. @default false */
  drop?: boolean;
}

/** A FIFO queue of at most `capacity` items with one producer and one consumer. */
export class BoundedQueue<T> {
  readonly capacity: number;
  readonly drop: boolean;
  /** Items discarded by `push` in drop mode. */
  dropped = 0;
  #items: T[] = [];
  #head = 0;
  #closed = false;
  #error: unknown = undefined;
  #wakeConsumer: (() => void) | undefined;
  #wakeProducer: (() => void) | undefined;

  constructor(options: BoundedQueueOptions) {
    if (!Number.isSafeInteger(options.capacity) || options.capacity < 1) {
      throw new RangeError(`Invalid queue capacity: current value is ${options.capacity}; use a whole number ≥ 1`);
    }
    this.capacity = options.capacity;
    this.drop = options.drop ?? false;
  }

  /** Number of items waiting. */
  get size(): number {
    return this.#items.length - this.#head;
  }

  /**
   * Add an item. Waits while the queue is full, or in drop mode discards the item and returns
   * false. Returns false without waiting once the queue is closed.
   */
  async push(item: T): Promise<boolean> {
    while (this.size >= this.capacity && !this.#closed) {
      if (this.drop) {
        this.dropped++;
        return false;
      }
      await new Promise<void>((resolve) => (this.#wakeProducer = resolve));
    }
    if (this.#closed) return false;
    this.#items.push(item);
    this.#wake("consumer");
    return true;
  }

  /** Whether `close` or `fail` was called; `push` no longer adds items. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Remove the waiting items and return them, oldest first. */
  drain(): T[] {
    const items = this.#items.slice(this.#head);
    this.#items = [];
    this.#head = 0;
    this.#wake("producer");
    return items;
  }

  /** Mark the end of input; `take` returns `end` once the waiting items are taken. */
  close(): void {
    this.#closed = true;
    this.#wake("consumer");
    this.#wake("producer");
  }

  /** End the input with an error that `take` throws once the waiting items are taken. */
  fail(error: unknown): void {
    this.#error = error;
    this.close();
  }

  /**
   * Take the oldest item, waiting for one. Returns `end` after `close` once the queue is
   * empty, and `timeout` when `timeoutMs` passes first.
   */
  async take(timeoutMs?: number): Promise<Taken<T>> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let timedOut = false;
    try {
      while (this.size === 0) {
        if (this.#closed) {
          if (this.#error !== undefined) throw this.#error;
          return { kind: "end" };
        }
        if (timedOut) return { kind: "timeout" };
        await new Promise<void>((resolve) => {
          this.#wakeConsumer = resolve;
          if (timeoutMs !== undefined && timer === undefined) {
            timer = setTimeout(() => {
              timedOut = true;
              this.#wake("consumer");
            }, Math.max(0, timeoutMs));
          }
        });
      }
    } finally {
      clearTimeout(timer);
    }
    const item = this.#items[this.#head];
    // Drop the reference now so a taken line can be collected before the next compaction.
    this.#items[this.#head++] = undefined as T;
    // Compact now and then so the array does not grow with the stream.
    if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    this.#wake("producer");
    return { kind: "item", item };
  }

  #wake(side: "consumer" | "producer"): void {
    if (side === "consumer") {
      const wake = this.#wakeConsumer;
      this.#wakeConsumer = undefined;
      wake?.();
    } else {
      const wake = this.#wakeProducer;
      this.#wakeProducer = undefined;
      wake?.();
    }
  }
}
