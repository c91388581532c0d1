/**
 * Imported first by the `osr` entry point, before anything touches the file system: an
 * agent keeps many files busy at once (guest flushes of every VM, logs being shipped,
 * deltas being applied, checkpoints), and libuv's default of 4 threads lets a few slow
 * fsyncs hold up every other file operation. UV_THREADPOOL_SIZE set by the user wins.
 */
process.env.UV_THREADPOOL_SIZE ??= '16';
