// File primitives that Node's fs module lacks: SEEK_DATA / SEEK_HOLE to find allocated
// ranges, fallocate(PUNCH_HOLE | KEEP_SIZE) to deallocate a range, the address
// alignment of a buffer (direct I/O needs aligned memory), the xxh128 of every block of a
// file range, read and hashed on the thread pool without passing through JS, many
// scattered reads or writes of one file in a single trip to the thread pool, and a
// duplicate of a descriptor. seal.c adds the sealed channel's records.
// Each file function takes a file descriptor and byte offsets as JS numbers (safe up to 2^53).
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <stdlib.h>
#include <node_api.h>
#define XXH_INLINE_ALL
#include "xxhash.h"

static napi_value throw_errno(napi_env env, const char *op, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", op, strerror(err));
  napi_value code, text, error;
  napi_create_string_utf8(env, err == ENXIO ? "ENXIO" : "EIO", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &error);
  napi_value errnoValue;
  napi_create_int32(env, err, &errnoValue);
  napi_set_named_property(env, error, "errno", errnoValue);
  napi_throw(env, error);
  return NULL;
}

static int read_args(napi_env env, napi_callback_info info, size_t want, int *fd, double *a, double *b) {
  napi_value argv[3];
  size_t argc = 3;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < want) {
    napi_throw_type_error(env, NULL, "not enough arguments");
    return 0;
  }
  if (napi_get_value_int32(env, argv[0], fd) != napi_ok) { napi_throw_type_error(env, NULL, "fd must be a number"); return 0; }
  if (napi_get_value_double(env, argv[1], a) != napi_ok) { napi_throw_type_error(env, NULL, "offset must be a number"); return 0; }
  if (want > 2 && napi_get_value_double(env, argv[2], b) != napi_ok) { napi_throw_type_error(env, NULL, "length must be a number"); return 0; }
  return 1;
}

// seek(fd, offset, whence): returns the resulting offset, or -1 when there is no more
// data (ENXIO) past offset.
static napi_value seek_common(napi_env env, napi_callback_info info, int whence) {
  int fd; double off;
  if (!read_args(env, info, 2, &fd, &off, NULL)) return NULL;
  off_t r = lseek(fd, (off_t)off, whence);
  napi_value out;
  if (r < 0) {
    if (errno == ENXIO) { napi_create_double(env, -1, &out); return out; }
    return throw_errno(env, "lseek", errno);
  }
  napi_create_double(env, (double)r, &out);
  return out;
}

static napi_value seek_data(napi_env env, napi_callback_info info) { return seek_common(env, info, SEEK_DATA); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return seek_common(env, info, SEEK_HOLE); }

static napi_value punch_hole(napi_env env, napi_callback_info info) {
  int fd; double off, len;
  if (!read_args(env, info, 3, &fd, &off, &len)) return NULL;
  if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) != 0) {
    return throw_errno(env, "fallocate", errno);
  }
  napi_value out;
  napi_get_undefined(env, &out);
  return out;
}

// alignOffset(buffer, align): bytes to skip from the start of buffer so that its memory
// address is a multiple of align (a power of two).
static napi_value align_offset(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  size_t argc = 2;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *data = NULL;
  size_t length = 0;
  uint32_t align = 0;
  if (argc < 2 || napi_get_buffer_info(env, argv[0], &data, &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "buffer must be a Buffer");
    return NULL;
  }
  if (napi_get_value_uint32(env, argv[1], &align) != napi_ok || align == 0 || (align & (align - 1)) != 0) {
    napi_throw_type_error(env, NULL, "align must be a power of two");
    return NULL;
  }
  uintptr_t addr = (uintptr_t)data;
  napi_value out;
  napi_create_uint32(env, (uint32_t)((align - (addr & (align - 1))) & (align - 1)), &out);
  return out;
}

// hashBlocks(fd, offset, length, blockSize): a promise of a Buffer holding the xxh128
// (canonical, big-endian, 16 bytes) of each blockSize block of [offset, offset + length),
// back to back; the last block may be shorter. Past the end of the file reads as zeroes,
// as for sparse images. The file is read in chunks of about 1 MiB into one buffer of the
// worker's own, so hashing a window costs no JS memory beyond its digests.
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  int64_t offset, length, block;
  unsigned char *out;
  size_t outLength;
  int err;
} hash_job;

static void hash_execute(napi_env env, void *data) {
  (void)env;
  hash_job *job = data;
  int64_t chunk = job->block >= (1 << 20) ? job->block : ((1 << 20) / job->block) * job->block;
  unsigned char *buf = malloc((size_t)chunk);
  if (!buf) { job->err = ENOMEM; return; }
  size_t digest = 0;
  for (int64_t done = 0; done < job->length; ) {
    int64_t want = job->length - done < chunk ? job->length - done : chunk;
    int64_t got = 0;
    while (got < want) {
      ssize_t n = pread(job->fd, buf + got, (size_t)(want - got), (off_t)(job->offset + done + got));
      if (n < 0) {
        if (errno == EINTR) continue;
        job->err = errno;
        free(buf);
        return;
      }
      if (n == 0) { memset(buf + got, 0, (size_t)(want - got)); break; }
      got += n;
    }
    for (int64_t b = 0; b < want; b += job->block) {
      size_t n = (size_t)(want - b < job->block ? want - b : job->block);
      XXH128_canonical_t c;
      XXH128_canonicalFromHash(&c, XXH3_128bits(buf + b, n));
      memcpy(job->out + digest, c.digest, 16);
      digest += 16;
    }
    done += want;
  }
  free(buf);
}

static void free_digests(napi_env env, void *data, void *hint) { (void)env; (void)hint; free(data); }

static void hash_complete(napi_env env, napi_status status, void *data) {
  hash_job *job = data;
  napi_value result;
  if (status != napi_ok || job->err) {
    char msg[160];
    snprintf(msg, sizeof msg, "pread: %s", strerror(job->err ? job->err : EIO));
    napi_value code, text;
    napi_create_string_utf8(env, "EIO", NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
    napi_create_error(env, code, text, &result);
    free(job->out);
    napi_reject_deferred(env, job->deferred, result);
  } else {
    napi_create_external_buffer(env, job->outLength, job->out, free_digests, NULL, &result);
    napi_resolve_deferred(env, job->deferred, result);
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value hash_blocks(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  size_t argc = 4;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd;
  double off, len, block;
  if (argc < 4 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_double(env, argv[1], &off) != napi_ok ||
      napi_get_value_double(env, argv[2], &len) != napi_ok || napi_get_value_double(env, argv[3], &block) != napi_ok) {
    napi_throw_type_error(env, NULL, "hashBlocks(fd, offset, length, blockSize) takes four numbers");
    return NULL;
  }
  if (off < 0 || len <= 0 || block < 1 || block > (1 << 24) || len > 1024.0 * 1024 * 1024) {
    napi_throw_range_error(env, NULL, "hashBlocks: offset, length or block size out of range");
    return NULL;
  }
  hash_job *job = calloc(1, sizeof *job);
  if (!job) return throw_errno(env, "hashBlocks", ENOMEM);
  job->fd = fd;
  job->offset = (int64_t)off;
  job->length = (int64_t)len;
  job->block = (int64_t)block;
  job->outLength = (size_t)((job->length + job->block - 1) / job->block) * 16;
  job->out = malloc(job->outLength);
  if (!job->out) { free(job); return throw_errno(env, "hashBlocks", ENOMEM); }
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "osr.hashBlocks", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, hash_execute, hash_complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

// readGather(fd, buffer, plan) and writeScatter(fd, buffer, plan): promises that read
// (write) many ranges of a file into (from) one buffer with a single trip to the thread
// pool. plan is a Float64Array of triples [filePosition, bufferOffset, length]. Reads past
// the end of the file give zeroes; short writes continue. The buffer must stay untouched
// until the promise settles (a reference keeps it alive).
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref bufRef, planRef;
  int fd, write, err;
  unsigned char *buf;
  size_t bufLength;
  double *plan;
  size_t triples;
} io_job;

static void io_execute(napi_env env, void *data) {
  (void)env;
  io_job *job = data;
  for (size_t i = 0; i < job->triples && !job->err; i++) {
    int64_t pos = (int64_t)job->plan[i * 3], at = (int64_t)job->plan[i * 3 + 1], len = (int64_t)job->plan[i * 3 + 2];
    for (int64_t done = 0; done < len; ) {
      ssize_t n = job->write ? pwrite(job->fd, job->buf + at + done, (size_t)(len - done), (off_t)(pos + done))
                             : pread(job->fd, job->buf + at + done, (size_t)(len - done), (off_t)(pos + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        job->err = errno;
        break;
      }
      if (n == 0) {
        if (job->write) { job->err = EIO; break; }
        memset(job->buf + at + done, 0, (size_t)(len - done));
        break;
      }
      done += n;
    }
  }
}

static void io_complete(napi_env env, napi_status status, void *data) {
  io_job *job = data;
  napi_value result;
  if (status != napi_ok || job->err) {
    int err = job->err ? job->err : EIO;
    char msg[160];
    snprintf(msg, sizeof msg, "%s: %s", job->write ? "pwrite" : "pread", strerror(err));
    napi_value code, text, errnoValue;
    napi_create_string_utf8(env, err == ENOSPC ? "ENOSPC" : "EIO", NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
    napi_create_error(env, code, text, &result);
    napi_create_int32(env, err, &errnoValue);
    napi_set_named_property(env, result, "errno", errnoValue);
    napi_reject_deferred(env, job->deferred, result);
  } else {
    napi_get_undefined(env, &result);
    napi_resolve_deferred(env, job->deferred, result);
  }
  napi_delete_reference(env, job->bufRef);
  napi_delete_reference(env, job->planRef);
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value io_plan(napi_env env, napi_callback_info info, int write) {
  napi_value argv[3];
  size_t argc = 3;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd;
  void *buf = NULL, *plan = NULL;
  size_t bufLength = 0, planLength = 0;
  napi_typedarray_type type;
  napi_value arraybuffer;
  size_t byteOffset;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_buffer_info(env, argv[1], &buf, &bufLength) != napi_ok ||
      napi_get_typedarray_info(env, argv[2], &type, &planLength, &plan, &arraybuffer, &byteOffset) != napi_ok || type != napi_float64_array || planLength % 3 != 0) {
    napi_throw_type_error(env, NULL, "readGather/writeScatter(fd, buffer, plan) takes a number, a Buffer and a Float64Array of triples");
    return NULL;
  }
  double *p = plan;
  for (size_t i = 0; i < planLength; i += 3) {
    if (p[i] < 0 || p[i + 1] < 0 || p[i + 2] < 0 || p[i + 1] + p[i + 2] > (double)bufLength) {
      napi_throw_range_error(env, NULL, "readGather/writeScatter: a range of the plan lies outside the buffer");
      return NULL;
    }
  }
  io_job *job = calloc(1, sizeof *job);
  if (!job) return throw_errno(env, write ? "writeScatter" : "readGather", ENOMEM);
  job->fd = fd;
  job->write = write;
  job->buf = buf;
  job->bufLength = bufLength;
  job->plan = plan;
  job->triples = planLength / 3;
  napi_create_reference(env, argv[1], 1, &job->bufRef);
  napi_create_reference(env, argv[2], 1, &job->planRef);
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, write ? "osr.writeScatter" : "osr.readGather", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, io_execute, io_complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

// digestBuffer(buf): a promise of the xxh128 (canonical, 16 bytes) of the whole buffer, hashed on the thread pool
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref bufRef;
  const unsigned char *buf;
  size_t length;
  XXH128_canonical_t out;
} digest_job;

static void digest_execute(napi_env env, void *data) {
  (void)env;
  digest_job *job = data;
  XXH128_canonicalFromHash(&job->out, XXH3_128bits(job->buf, job->length));
}

static void digest_complete(napi_env env, napi_status status, void *data) {
  digest_job *job = data;
  napi_value result;
  if (status != napi_ok) {
    napi_value text;
    napi_create_string_utf8(env, "digestBuffer: cancelled", NAPI_AUTO_LENGTH, &text);
    napi_create_error(env, NULL, text, &result);
    napi_reject_deferred(env, job->deferred, result);
  } else {
    void *copy;
    napi_create_buffer_copy(env, sizeof job->out, &job->out, &copy, &result);
    napi_resolve_deferred(env, job->deferred, result);
  }
  napi_delete_reference(env, job->bufRef);
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value digest_buffer(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *buf;
  size_t length;
  if (argc < 1 || napi_get_buffer_info(env, argv[0], &buf, &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "digestBuffer(buffer) takes a Buffer");
    return NULL;
  }
  digest_job *job = calloc(1, sizeof *job);
  if (!job) return throw_errno(env, "digestBuffer", ENOMEM);
  job->buf = buf;
  job->length = length;
  napi_create_reference(env, argv[0], 1, &job->bufRef);
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "osr.digestBuffer", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, digest_execute, digest_complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

// dupFd(fd): a duplicate of the descriptor (close-on-exec), for a socket Node can only make from a descriptor
static napi_value dup_fd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "dupFd(fd) takes a descriptor");
    return NULL;
  }
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return throw_errno(env, "dup", errno);
  napi_value result;
  napi_create_int32(env, copy, &result);
  return result;
}

static napi_value read_gather(napi_env env, napi_callback_info info) { return io_plan(env, info, 0); }
static napi_value write_scatter(napi_env env, napi_callback_info info) { return io_plan(env, info, 1); }

void osr_register_seal(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_default, NULL},
    {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_default, NULL},
    {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_default, NULL},
    {"alignOffset", NULL, align_offset, NULL, NULL, NULL, napi_default, NULL},
    {"hashBlocks", NULL, hash_blocks, NULL, NULL, NULL, napi_default, NULL},
    {"readGather", NULL, read_gather, NULL, NULL, NULL, napi_default, NULL},
    {"writeScatter", NULL, write_scatter, NULL, NULL, NULL, napi_default, NULL},
    {"dupFd", NULL, dup_fd, NULL, NULL, NULL, napi_default, NULL},
    {"digestBuffer", NULL, digest_buffer, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  osr_register_seal(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
