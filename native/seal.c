// Sealed records of the replication protocol's bulk channel, on the thread pool: AES-256-GCM
// with the OpenSSL that Node.js itself is built with (its symbols are the node binary's).
// sealRecord encrypts a plaintext into a destination (the same memory or another buffer) and
// appends the 16-byte tag; openRecord checks the tag and decrypts in place. Both take the
// 32-byte key, the 12-byte nonce and the associated data as buffers, and resolve once done:
// the main thread only queues them. docs/design/replication-protocol.md, "Sealed channel".
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <node_api.h>
#include <openssl/evp.h>

#define KEY_BYTES 32
#define NONCE_BYTES 12
#define TAG_BYTES 16
#define MAX_AAD_BYTES 64

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref srcRef, dstRef;
  int open, ok, failed; // failed: the cipher could not run (not a tag mismatch)
  unsigned char key[KEY_BYTES], nonce[NONCE_BYTES], aad[MAX_AAD_BYTES];
  size_t aadLength;
  unsigned char *src, *dst;
  size_t length; // plaintext bytes (the tag follows them in dst, or in src when opening)
} seal_job;

static int gcm(seal_job *job) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (!ctx) {
    job->failed = 1;
    return 0;
  }
  int ok = 0, n = 0;
  const int enc = !job->open;
  if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1) goto done;
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_BYTES, NULL) != 1) goto done;
  if (EVP_CipherInit_ex(ctx, NULL, NULL, job->key, job->nonce, enc) != 1) goto done;
  if (job->aadLength > 0 && EVP_CipherUpdate(ctx, NULL, &n, job->aad, (int)job->aadLength) != 1) goto done;
  if (job->open && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, job->src + job->length) != 1) goto done;
  // in pieces of at most 1 GiB: the length is an int
  for (size_t at = 0; at < job->length;) {
    size_t piece = job->length - at > (1u << 30) ? (1u << 30) : job->length - at;
    if (EVP_CipherUpdate(ctx, job->dst + at, &n, job->src + at, (int)piece) != 1 || (size_t)n != piece) goto done;
    at += piece;
  }
  if (EVP_CipherFinal_ex(ctx, job->dst + job->length, &n) != 1) goto done;
  if (!job->open && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, job->dst + job->length) != 1) goto done;
  ok = 1;
done:
  EVP_CIPHER_CTX_free(ctx);
  return ok;
}

static void seal_execute(napi_env env, void *data) {
  (void)env;
  seal_job *job = data;
  job->ok = gcm(job);
  // an open that failed leaves no unauthenticated plaintext behind
  if (job->open && !job->ok) memset(job->dst, 0, job->length);
}

static void seal_complete(napi_env env, napi_status status, void *data) {
  seal_job *job = data;
  napi_value result;
  if (status != napi_ok || (!job->open && !job->ok) || job->failed) {
    napi_value text;
    napi_create_string_utf8(env, job->open ? "openRecord: the cipher failed" : "sealRecord: the cipher failed", NAPI_AUTO_LENGTH, &text);
    napi_create_error(env, NULL, text, &result);
    napi_reject_deferred(env, job->deferred, result);
  } else {
    napi_get_boolean(env, job->ok != 0, &result);
    napi_resolve_deferred(env, job->deferred, result);
  }
  napi_delete_reference(env, job->srcRef);
  if (job->dstRef) napi_delete_reference(env, job->dstRef);
  napi_delete_async_work(env, job->work);
  OPENSSL_cleanse(job->key, KEY_BYTES);
  free(job);
}

static int fixed(napi_env env, napi_value v, unsigned char *out, size_t want, size_t *got) {
  void *p;
  size_t n;
  if (napi_get_buffer_info(env, v, &p, &n) != napi_ok) return 0;
  if (got) {
    if (n > want) return 0;
    *got = n;
  } else if (n != want) return 0;
  memcpy(out, p, n);
  return 1;
}

// sealRecord(key, nonce, aad, src, dst): dst holds src's length plus 16 (it may be src's own memory, grown by the tag)
// openRecord(key, nonce, aad, buf): buf is the ciphertext then the tag; resolves true and buf's head is the plaintext, or false
static napi_value start(napi_env env, napi_callback_info info, int open) {
  napi_value argv[5];
  size_t argc = 5;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  seal_job *job = calloc(1, sizeof *job);
  if (!job) {
    napi_throw_error(env, NULL, "sealRecord: out of memory");
    return NULL;
  }
  job->open = open;
  void *src = NULL, *dst = NULL;
  size_t srcLength = 0, dstLength = 0;
  int good = argc >= (size_t)(open ? 4 : 5) && fixed(env, argv[0], job->key, KEY_BYTES, NULL) && fixed(env, argv[1], job->nonce, NONCE_BYTES, NULL) &&
             fixed(env, argv[2], job->aad, MAX_AAD_BYTES, &job->aadLength) && napi_get_buffer_info(env, argv[3], &src, &srcLength) == napi_ok;
  if (good && open) {
    good = srcLength >= TAG_BYTES;
    job->length = srcLength - TAG_BYTES;
    dst = src;
  } else if (good) {
    good = napi_get_buffer_info(env, argv[4], &dst, &dstLength) == napi_ok && dstLength == srcLength + TAG_BYTES;
    // in place, or apart: memory that overlaps otherwise would be read after it was written
    unsigned char *s = src, *d = dst;
    if (good && s != d && d < s + srcLength && s < d + dstLength) good = 0;
    job->length = srcLength;
  }
  if (!good) {
    OPENSSL_cleanse(job->key, KEY_BYTES);
    free(job);
    napi_throw_type_error(env, NULL, open ? "openRecord(key32, nonce12, aad, sealed) takes buffers of those sizes, the sealed one at least a tag long"
                                          : "sealRecord(key32, nonce12, aad, src, dst) takes buffers of those sizes, dst 16 bytes longer than src");
    return NULL;
  }
  job->src = src;
  job->dst = dst;
  napi_create_reference(env, argv[3], 1, &job->srcRef);
  if (!open) napi_create_reference(env, argv[4], 1, &job->dstRef);
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, open ? "osr.openRecord" : "osr.sealRecord", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, seal_execute, seal_complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

static napi_value seal_record(napi_env env, napi_callback_info info) { return start(env, info, 0); }
static napi_value open_record(napi_env env, napi_callback_info info) { return start(env, info, 1); }

void osr_register_seal(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"sealRecord", NULL, seal_record, NULL, NULL, NULL, napi_default, NULL},
    {"openRecord", NULL, open_record, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
