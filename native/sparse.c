// File primitives that Node's fs module lacks: SEEK_DATA / SEEK_HOLE to find allocated
// ranges, fallocate(PUNCH_HOLE | KEEP_SIZE) to deallocate a range, and the address
// alignment of a buffer (direct I/O needs aligned memory).
// Each file function takes a file descriptor and byte offsets as JS numbers (safe up to 2^53).
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>

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

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_default, NULL},
    {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_default, NULL},
    {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_default, NULL},
    {"alignOffset", NULL, align_offset, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
