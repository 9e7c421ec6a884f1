/* client._fastemit: the common case of `Client.emit` into a ring, and on the
 * sidecar's side the reader's common records and the conversion of a binary
 * record back into its JSON envelope (decoded on the way), in C.
 *
 *     from client import _fastemit               # absent: the pure-Python path runs
 *     em = _fastemit.Emitter(client, writer, client._emit_pure, {"webhook.post": 6, ...}, TransportError)
 *     em.emit("webhook.post", {"text": "hi"}, key=None, ref=None)   # Client.emit's signature
 *     _fastemit.binary_frame(body, b'"client-id"', (b'"notion.page.create"', ...))  # -> b'[1,"client-id",...]'
 *     _fastemit.ring_event(body, ctx)            # -> (that frame, its wire.Envelope or None): decode.py
 *     _fastemit.scan_run(...), parse_run(...)    # Ring._scan's and Ring._parse's loops: ring_reader.py
 *
 * Why C with the CPython API rather than Cython: the module is two functions
 * and one small type, the probe in issue 20 was this code, and it needs only
 * Python's headers and a C compiler to build (no build-time Cython, no
 * generated file in the repository). The payload is serialised by calling
 * orjson.dumps from here, so what the sidecar parses is exactly what the
 * pure-Python path would have sent.
 *
 * The fast path takes only the common case: the client's transport is the
 * ring this Emitter was made for, no blob, a known kind, key and ref str or
 * None, no stats report due, no checksum, and a record that fits before the
 * ring's end and within the room the sidecar has acknowledged. Anything else
 * (and any error) calls `fallback`, the pure-Python emit, which handles it
 * exactly as it always has (strict mode, drop counters, warnings, wrap,
 * full ring, quarantine). State stays in the Python objects' dicts (the
 * client's _seq and _transport, the writer's _pos, _read, _ack, _answered),
 * so both paths always agree; nothing is cached that Python can change.
 *
 * The commit mark (the record's trailer) is written with a release store:
 * on any CPU a reader that loads it with acquire ordering sees the body.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define FILE_HEADER 4096
#define REC_FLAGS_BINARY_V1 0x10
#define BIN_FIXED 24
#define NO_STRING 0xFFFF
#define ACK_WAKE 24
/* The JSON envelope the sidecar rebuilds is at most this much longer than a
 * binary body (brackets, commas, quotes, version, two 20-digit numbers, the
 * kind): the size check errs on the safe side and lets Python decide. */
#define ENVELOPE_SLACK 96

static PyObject *dumps;
static PyObject *s_seq, *s_transport, *s_next_stats, *s_pos, *s_read, *s_ack, *s_answered, *s_wake,
    *s_transport_failed, *s_mm, *s_max_event, *s_rang, *s_next_look;
static PyObject *kw_key, *kw_ref, *kw_blob;
static PyObject *s_client_id, *s_ctx;

typedef struct {
    PyObject_HEAD
    PyObject *client_dict;
    PyObject *writer;
    PyObject *writer_dict;
    PyObject *fallback;
    PyObject *kinds;        /* dict: kind -> code */
    PyObject *transport_error;
    PyObject *client;       /* for _transport_failed */
    uint64_t capacity, usable;
    Py_ssize_t envelope_extra;
    int checksum;
} Emitter;

static int
Emitter_traverse(Emitter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->client_dict);
    Py_VISIT(self->writer);
    Py_VISIT(self->writer_dict);
    Py_VISIT(self->fallback);
    Py_VISIT(self->kinds);
    Py_VISIT(self->transport_error);
    Py_VISIT(self->client);
    return 0;
}

static int
Emitter_clear(Emitter *self)
{
    Py_CLEAR(self->client_dict);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->writer_dict);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->kinds);
    Py_CLEAR(self->transport_error);
    Py_CLEAR(self->client);
    return 0;
}

static void
Emitter_dealloc(Emitter *self)
{
    PyObject_GC_UnTrack(self);
    Emitter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Emitter_init(Emitter *self, PyObject *args, PyObject *kwds)
{
    PyObject *client, *writer, *fallback, *kinds, *terr;
    if (!PyArg_ParseTuple(args, "OOOO!O:Emitter", &client, &writer, &fallback, &PyDict_Type, &kinds, &terr))
        return -1;
    PyObject *cdict = PyObject_GenericGetDict(client, NULL);
    if (cdict == NULL)
        return -1;
    PyObject *wdict = PyObject_GenericGetDict(writer, NULL);
    if (wdict == NULL) {
        Py_DECREF(cdict);
        return -1;
    }
    PyObject *cap = PyObject_GetAttrString(writer, "capacity");
    PyObject *usable = PyObject_GetAttrString(writer, "_usable");
    PyObject *checksum = PyObject_GetAttrString(writer, "checksum");
    PyObject *cid = PyObject_GetAttrString(client, "client_id");
    int ok = cap && usable && checksum && cid && PyUnicode_Check(cid);
    if (ok) {
        self->capacity = PyLong_AsUnsignedLongLong(cap);
        self->usable = PyLong_AsUnsignedLongLong(usable);
        self->checksum = PyObject_IsTrue(checksum);
        self->envelope_extra = ENVELOPE_SLACK + PyUnicode_GET_LENGTH(cid);
        ok = !PyErr_Occurred() && self->capacity && !(self->capacity & (self->capacity - 1));
        if (ok == 0 && !PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "ring capacity must be a power of two");
    }
    Py_XDECREF(cap);
    Py_XDECREF(usable);
    Py_XDECREF(checksum);
    Py_XDECREF(cid);
    if (!ok) {
        Py_DECREF(cdict);
        Py_DECREF(wdict);
        return -1;
    }
    Emitter_clear(self);
    self->client_dict = cdict;
    self->writer_dict = wdict;
    self->writer = Py_NewRef(writer);
    self->client = Py_NewRef(client);
    self->fallback = Py_NewRef(fallback);
    self->kinds = Py_NewRef(kinds);
    self->transport_error = Py_NewRef(terr);
    return 0;
}

/* A dict item that must be a non-negative int below 2^63; -1 with no error set
 * if absent or not one. (PyLong_AsLongLongAndOverflow reads the digits in a
 * loop; PyLong_AsUnsignedLongLong goes through _PyLong_AsByteArray for any
 * value past 2^30, which a nanosecond clock always is: ~20 ns a call.) */
static int
get_u64(PyObject *dict, PyObject *name, uint64_t *out)
{
    PyObject *v = PyDict_GetItemWithError(dict, name);
    if (v == NULL || !PyLong_CheckExact(v))
        return -1;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || x < 0) {
        PyErr_Clear();  /* (-1 with an error cannot happen for an int; cleared anyway) */
        return -1;
    }
    *out = (uint64_t)x;
    return 0;
}

static int
set_u64(PyObject *dict, PyObject *name, uint64_t value)
{
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    if (v == NULL)
        return -1;
    int r = PyDict_SetItem(dict, name, v);
    Py_DECREF(v);
    return r;
}

/* key/ref: None -> NO_STRING; a str -> its UTF-8; else -1 (the fallback decides). */
static int
string_arg(PyObject *o, const char **s, Py_ssize_t *n)
{
    if (o == NULL || o == Py_None) {
        *s = NULL;
        *n = 0;
        return 0;
    }
    if (!PyUnicode_CheckExact(o))
        return -1;
    *s = PyUnicode_AsUTF8AndSize(o, n);
    if (*s == NULL) {  /* lone surrogates: orjson refuses them too, in the fallback */
        PyErr_Clear();
        return -1;
    }
    return *n < NO_STRING ? 0 : -1;
}

/* Bytes JSON escaping adds to a key or ref (up to 5 a byte: \u001f), so the
 * size check errs only on the safe side of the envelope the sidecar rebuilds. */
static uint64_t
escapes(const char *s, Py_ssize_t n)
{
    uint64_t extra = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\')
            extra += 5;
    }
    return extra;
}

static inline void
put_u16(char *p, uint16_t v)
{
    memcpy(p, &v, 2);  /* little-endian hosts only: setup.py builds this module on those */
}

/* RingWriter._wake's first test, for a ring no sidecar has adopted yet: it
 * rang once already and looks for the ack file at most once a millisecond
 * (`_next_look`, monotonic ns). True: _wake would do nothing now. */
static int
unadopted_quiet(Emitter *self)
{
    uint64_t next_look;
    PyObject *rang = PyDict_GetItemWithError(self->writer_dict, s_rang);
    if (rang != Py_True || get_u64(self->writer_dict, s_next_look, &next_look) < 0)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec < next_look;
}

static PyObject *
Emitter_emit(Emitter *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *key = NULL, *ref = NULL;
    if (nargs != 2)
        goto slow;
    if (kwnames != NULL) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nk; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            PyObject *value = args[nargs + i];
            if (name == kw_key)
                key = value;
            else if (name == kw_ref)
                ref = value;
            else if (name == kw_blob && value == Py_None)
                continue;
            else
                goto slow;  /* a blob, or a name spelled another way: Python's rules */
        }
    }
    if (PyDict_GetItemWithError(self->client_dict, s_transport) != self->writer)
        goto slow;  /* closed, forked, quarantined, reconnecting */
    PyObject *kind = args[0];
    if (!PyUnicode_CheckExact(kind))
        goto slow;
    PyObject *code = PyDict_GetItemWithError(self->kinds, kind);
    if (code == NULL)
        goto slow;
    const char *ks, *rs;
    Py_ssize_t kn, rn;
    if (string_arg(key, &ks, &kn) < 0 || string_arg(ref, &rs, &rn) < 0 || self->checksum)
        goto slow;
    uint64_t seq, next_stats, pos, read, max_event;
    if (get_u64(self->client_dict, s_seq, &seq) < 0 || get_u64(self->client_dict, s_next_stats, &next_stats) < 0
        || get_u64(self->client_dict, s_max_event, &max_event) < 0
        || get_u64(self->writer_dict, s_pos, &pos) < 0 || get_u64(self->writer_dict, s_read, &read) < 0)
        goto slow;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    if (now >= next_stats)
        goto slow;  /* the once-a-second report is Python's */
    PyObject *json = PyObject_CallOneArg(dumps, args[1]);
    if (json == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError))
            return NULL;
        PyErr_Clear();
        goto slow;  /* unserializable: counted (or raised) by Python */
    }
    Py_ssize_t jn = PyBytes_GET_SIZE(json);
    uint64_t size = BIN_FIXED + (uint64_t)kn + (uint64_t)rn + (uint64_t)jn;
    uint64_t rec = (size + 31) & ~(uint64_t)7;
    uint64_t off = pos & (self->capacity - 1);
    uint64_t end = pos + rec;
    if (size + (uint64_t)self->envelope_extra + escapes(ks, kn) + escapes(rs, rn) > max_event
        || off + rec > self->capacity || end - read > self->usable) {
        Py_DECREF(json);
        goto slow;  /* too large (decided exactly by Python), a wrap, or a ring to look at again */
    }
    PyObject *mm = PyDict_GetItemWithError(self->writer_dict, s_mm);
    Py_buffer ring;
    if (mm == NULL || PyObject_GetBuffer(mm, &ring, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        Py_DECREF(json);
        goto slow;
    }
    if ((uint64_t)ring.len < FILE_HEADER + self->capacity) {
        PyBuffer_Release(&ring);
        Py_DECREF(json);
        goto slow;
    }
    char *p = (char *)ring.buf + FILE_HEADER + off;
    uint32_t hdr[4] = {(uint32_t)size, 1u | ((uint32_t)REC_FLAGS_BINARY_V1 << 16), 0, 0};
    memcpy(p, hdr, 16);
    char *b = p + 16;
    uint64_t next = seq + 1;
    memcpy(b, &next, 8);
    memcpy(b + 8, &now, 8);
    put_u16(b + 16, ks ? (uint16_t)kn : NO_STRING);
    put_u16(b + 18, rs ? (uint16_t)rn : NO_STRING);
    b[20] = (char)PyLong_AsLong(code);
    b[21] = b[22] = b[23] = 0;
    b += BIN_FIXED;
    if (kn) memcpy(b, ks, kn);
    b += kn;
    if (rn) memcpy(b, rs, rn);
    b += rn;
    memcpy(b, PyBytes_AS_STRING(json), jn);
    b += jn;
    memset(b, 0, (p + rec - 8) - b);
    /* The commit mark, last, with release ordering: the body is visible first. */
    __atomic_store_n((uint64_t *)(p + rec - 8), end, __ATOMIC_RELEASE);
    PyBuffer_Release(&ring);
    Py_DECREF(json);
    if (set_u64(self->writer_dict, s_pos, end) < 0)
        return NULL;
    /* The wake generation: a byte of the ack mapping (or the stand-in bytearray). */
    PyObject *ack = PyDict_GetItemWithError(self->writer_dict, s_ack);
    PyObject *answered = PyDict_GetItemWithError(self->writer_dict, s_answered);
    int wake_differs = 1;
    Py_buffer ab;
    if (ack != NULL && answered != NULL && PyObject_GetBuffer(ack, &ab, PyBUF_SIMPLE) == 0) {
        if (ab.len > ACK_WAKE)
            wake_differs = ((unsigned char *)ab.buf)[ACK_WAKE] != PyLong_AsLong(answered);
        PyBuffer_Release(&ab);
    }
    PyErr_Clear();
    if (wake_differs && ack != NULL && PyByteArray_CheckExact(ack) && unadopted_quiet(self)) {
        wake_differs = 0;  /* not adopted yet, rang already, and looked for the ack file within the millisecond */
    }
    if (wake_differs) {
        PyObject *r = PyObject_CallMethodNoArgs(self->writer, s_wake);
        if (r == NULL) {
            if (!PyErr_ExceptionMatches(self->transport_error))
                return NULL;
            PyErr_Clear();  /* quarantined: as Python's emit, the event is lost and counted */
            return PyObject_CallMethodOneArg(self->client, s_transport_failed, self->writer);
        }
        Py_DECREF(r);
    }
    if (set_u64(self->client_dict, s_seq, next) < 0)
        return NULL;
    Py_RETURN_TRUE;
slow:
    if (PyErr_Occurred())
        PyErr_Clear();
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static PyMethodDef Emitter_methods[] = {
    {"emit", (PyCFunction)(void (*)(void))Emitter_emit, METH_FASTCALL | METH_KEYWORDS,
     "emit(kind, payload, *, key=None, ref=None, blob=None) -> bool: Client.emit's common case."},
    {NULL}};

static PyTypeObject EmitterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "client._fastemit.Emitter",
    .tp_basicsize = sizeof(Emitter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Emitter(client, writer, fallback, kind_codes, TransportError): one Client's ring, in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Emitter_init,
    .tp_dealloc = (destructor)Emitter_dealloc,
    .tp_traverse = (traverseproc)Emitter_traverse,
    .tp_clear = (inquiry)Emitter_clear,
    .tp_methods = Emitter_methods,
};

/* -- the reader's side ------------------------------------------------------ */

/* A JSON string as orjson writes it: quote, backslash and control characters
 * escaped, everything else (UTF-8 included) as is. Returns the new end. */
static char *
json_string(char *o, const unsigned char *s, Py_ssize_t n)
{
    static const char hex[] = "0123456789abcdef";
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            *o++ = 'u'; *o++ = '0'; *o++ = '0'; *o++ = hex[c >> 4]; *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    return o;
}

/* A binary v1 body's fixed fields, checked against its length and the kinds. */
typedef struct {
    uint64_t seq, ns;
    uint16_t kn, rn;
    Py_ssize_t klen, rlen, jn;
    unsigned code;
    const unsigned char *key, *ref, *payload;
} BinaryFields;

/* 0 and the fields, or -1 if the body breaks the layout (no Python error set). */
static int
binary_fields(const unsigned char *b, Py_ssize_t n, Py_ssize_t nkinds, BinaryFields *f)
{
    if (n < BIN_FIXED)
        return -1;
    memcpy(&f->seq, b, 8);
    memcpy(&f->ns, b + 8, 8);
    memcpy(&f->kn, b + 16, 2);
    memcpy(&f->rn, b + 18, 2);
    f->code = b[20];
    f->klen = f->kn == NO_STRING ? 0 : f->kn;
    f->rlen = f->rn == NO_STRING ? 0 : f->rn;
    if (f->code >= nkinds || BIN_FIXED + f->klen + f->rlen > n)
        return -1;
    f->key = b + BIN_FIXED;
    f->ref = f->key + f->klen;
    f->payload = f->ref + f->rlen;
    f->jn = n - BIN_FIXED - f->klen - f->rlen;
    return 0;
}

/* `v` in decimal at `o`; returns the new end (sprintf's "%llu", without its parsing of a format). */
static inline char *
decimal(char *o, uint64_t v)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *o++ = digits[--n];
    return o;
}

/* The envelope [1,CID,seq,KIND,key,ref,ns,payload] of checked fields; NULL with an error set
 * (memory). *payload_at gets the payload's offset in it. */
static PyObject *
envelope_of(const BinaryFields *f, const char *cid, Py_ssize_t cid_n, PyObject *kind, Py_ssize_t *payload_at)
{
    const char *kind_s = PyBytes_AS_STRING(kind);
    Py_ssize_t kind_n = PyBytes_GET_SIZE(kind);
    /* 6 escapes a byte at most, two 20-digit numbers */
    Py_ssize_t cap = 16 + cid_n + 21 + kind_n + 2 + 6 * (f->klen + f->rlen) + 4 + 21 + f->jn + 8;
    PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(out);
    char *start = o;
    memcpy(o, "[1,", 3); o += 3;
    memcpy(o, cid, cid_n); o += cid_n;
    *o++ = ',';
    o = decimal(o, f->seq);
    *o++ = ',';
    memcpy(o, kind_s, kind_n); o += kind_n;
    *o++ = ',';
    if (f->kn == NO_STRING) { memcpy(o, "null", 4); o += 4; } else o = json_string(o, f->key, f->klen);
    *o++ = ',';
    if (f->rn == NO_STRING) { memcpy(o, "null", 4); o += 4; } else o = json_string(o, f->ref, f->rlen);
    *o++ = ',';
    o = decimal(o, f->ns);
    *o++ = ',';
    if (payload_at != NULL)
        *payload_at = o - start;
    memcpy(o, f->payload, f->jn); o += f->jn;
    *o++ = ']';
    if (_PyBytes_Resize(&out, o - start) < 0)
        return NULL;
    return out;
}

static PyObject *
binary_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer body, cid;
    if (nargs != 3 || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "binary_frame(body, client_id_json, kinds)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &body, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &cid, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&body);
        return NULL;
    }
    PyObject *out;
    BinaryFields f;
    PyObject *kind;
    if (binary_fields(body.buf, body.len, PyTuple_GET_SIZE(args[2]), &f) < 0
            || !PyBytes_Check(kind = PyTuple_GET_ITEM(args[2], f.code)))
        out = PyBytes_FromStringAndSize("", 0);  /* no envelope: ingest rejects it as bad_json */
    else
        out = envelope_of(&f, cid.buf, cid.len, kind, NULL);
    PyBuffer_Release(&body);
    PyBuffer_Release(&cid);
    return out;
}

/* A string of the body as str, or None for NO_STRING; NULL without an error: not UTF-8. */
static PyObject *
maybe_str(uint16_t len_field, const unsigned char *s, Py_ssize_t n)
{
    if (len_field == NO_STRING)
        Py_RETURN_NONE;
    PyObject *out = PyUnicode_DecodeUTF8((const char *)s, n, NULL);
    if (out == NULL)
        PyErr_Clear();
    return out;
}

#define MAX_INT 0x7FFFFFFFFFFFFFFFULL
/* A payload this long or longer is parsed inside its envelope (the slow path): only from
 * 2 x 1,024 bytes can it nest deep enough for orjson to take it alone and refuse it one level
 * deeper, in the envelope. */
#define FAST_PAYLOAD_MAX 2048

/* ring_event(body, ctx) -> (frame, env or None): decode.py's `ring_event_py`, in C (its docstring). */
static PyObject *
ring_event(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *ctx;
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyTuple_Check(ctx = args[1]) || PyTuple_GET_SIZE(ctx) != 6
            || !PyBytes_Check(PyTuple_GET_ITEM(ctx, 0)) || !PyTuple_Check(PyTuple_GET_ITEM(ctx, 2))
            || !PyTuple_Check(PyTuple_GET_ITEM(ctx, 3)) || !PyType_Check(PyTuple_GET_ITEM(ctx, 4))
            || !PyType_IsSubtype((PyTypeObject *)PyTuple_GET_ITEM(ctx, 4), &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "ring_event(body: bytes, (cid_json, cid, kinds_json, kinds, Envelope, loads))");
        return NULL;
    }
    PyObject *cid_json = PyTuple_GET_ITEM(ctx, 0), *cid = PyTuple_GET_ITEM(ctx, 1);
    PyObject *kinds_json = PyTuple_GET_ITEM(ctx, 2), *kinds = PyTuple_GET_ITEM(ctx, 3);
    PyTypeObject *envelope_t = (PyTypeObject *)PyTuple_GET_ITEM(ctx, 4);
    PyObject *loads = PyTuple_GET_ITEM(ctx, 5);
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *frame, *env = NULL;
    BinaryFields f;
    PyObject *kind_json;
    Py_ssize_t payload_at = 0;
    if (binary_fields(b, n, PyTuple_GET_SIZE(kinds_json), &f) < 0 || f.code >= PyTuple_GET_SIZE(kinds)
            || !PyBytes_Check(kind_json = PyTuple_GET_ITEM(kinds_json, f.code)))
        return Py_BuildValue("(yO)", "", Py_None);  /* no envelope: ingest rejects it as bad_json */
    frame = envelope_of(&f, PyBytes_AS_STRING(cid_json), PyBytes_GET_SIZE(cid_json), kind_json, &payload_at);
    if (frame == NULL)
        return NULL;
    /* The fields as wire.decode would give them, or no env: the frame then goes
     * through wire.decode, whose reasons and details stay the only ones. */
    if (f.seq <= MAX_INT && f.ns <= MAX_INT && f.jn < FAST_PAYLOAD_MAX) {
        PyObject *key = maybe_str(f.kn, f.key, f.klen);
        PyObject *ref = key == NULL ? NULL : maybe_str(f.rn, f.ref, f.rlen);
        PyObject *payload = NULL;
        if (ref != NULL) {
            PyObject *raw = PyMemoryView_FromMemory(PyBytes_AS_STRING(frame) + payload_at, f.jn, PyBUF_READ);
            if (raw == NULL)
                goto fail;
            payload = PyObject_CallOneArg(loads, raw);  /* the frame outlives raw: we hold it */
            Py_DECREF(raw);
            if (payload == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_ValueError))  /* orjson.JSONDecodeError is one */
                    goto fail;
                PyErr_Clear();
            }
        }
        if (payload != NULL) {
            PyObject *seq = PyLong_FromUnsignedLongLong(f.seq), *ns = PyLong_FromUnsignedLongLong(f.ns);
            PyObject *kind = PyTuple_GET_ITEM(kinds, f.code);
            /* The NamedTuple made as tuple.__new__(Envelope, ...) makes a tuple subclass
             * (tp_alloc, then the items), without its Python-level __new__. */
            env = seq && ns ? envelope_t->tp_alloc(envelope_t, 7) : NULL;
            if (env == NULL) {
                Py_XDECREF(seq); Py_XDECREF(ns);
                Py_DECREF(key); Py_DECREF(ref); Py_DECREF(payload); Py_DECREF(frame);
                return NULL;
            }
            Py_INCREF(cid);
            Py_INCREF(kind);
            PyTuple_SET_ITEM(env, 0, cid);   /* each reference moves into the tuple */
            PyTuple_SET_ITEM(env, 1, seq);
            PyTuple_SET_ITEM(env, 2, kind);
            PyTuple_SET_ITEM(env, 3, key);
            PyTuple_SET_ITEM(env, 4, ref);
            PyTuple_SET_ITEM(env, 5, ns);
            PyTuple_SET_ITEM(env, 6, payload);
        } else {
            Py_XDECREF(key);
            Py_XDECREF(ref);
        }
        goto done;
    fail:
        Py_XDECREF(key);
        Py_XDECREF(ref);
        Py_DECREF(frame);
        return NULL;
    }
done:;
    PyObject *out = PyTuple_Pack(2, frame, env != NULL ? env : Py_None);
    Py_DECREF(frame);
    Py_XDECREF(env);
    return out;
}

/* -- the ring reader's common records (sidecar/ingest/ring_reader.py) ------------
 *
 * Two loops of `Ring` over a copy of the ring, for the records every producer
 * writes: each walks while the record in front of it is one it takes, by the very
 * tests of the Python loop it stands for, and stops at the first other one,
 * leaving it (and all that Python alone does: wraps, checksums, blobs,
 * corruption) to that loop, which goes on from there. */

#define REC_HEADER 16
#define REC_MIN 24             /* header and trailer */
#define REC_WRAP 1
#define REC_KNOWN 0x113        /* wrap, CRC, binary v1, part refs */

static int
int64_args(PyObject *const *args, Py_ssize_t from, Py_ssize_t to, int64_t *out)
{
    for (Py_ssize_t k = from; k < to; k++) {
        long long v = PyLong_AsLongLong(args[k]);
        if (v == -1 && PyErr_Occurred())
            return -1;
        out[k - from] = v;
    }
    return 0;
}

static inline uint64_t
record_len(uint32_t size)
{
    return ((uint64_t)size + REC_MIN + 7) & ~(uint64_t)7;
}

/* scan_run(buf, i, pos, off, cap, largest, budget, records) -> (i, records): `Ring._scan`'s loop
 * over committed records that are not wraps. */
static PyObject *
scan_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t v[7];
    if (nargs != 8 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_run(buf: bytes, i, pos, off, cap, largest, budget, records)");
        return NULL;
    }
    if (int64_args(args, 1, 8, v) < 0)
        return NULL;
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    int64_t n = PyBytes_GET_SIZE(args[0]);
    int64_t i = v[0], pos = v[1], off = v[2], cap = v[3], largest = v[4], budget = v[5], records = v[6];
    if (i < 0 || pos < 0 || off < 0)
        return Py_BuildValue("(LL)", (long long)i, (long long)records);
    while (n - i >= REC_MIN && i < budget && records > 0) {
        uint32_t size;
        uint16_t flags;
        uint64_t end;
        memcpy(&size, b + i, 4);
        memcpy(&flags, b + i + 6, 2);
        int64_t rec = (int64_t)record_len(size);
        if ((flags & REC_WRAP) || (int64_t)size > largest || off + i + rec > cap || (flags & ~REC_KNOWN)
                || i + rec > n)
            break;
        memcpy(&end, b + i + rec - 8, 8);
        if (end != (uint64_t)(pos + i + rec))
            break;
        i += rec;
        records--;
    }
    return Py_BuildValue("(LL)", (long long)i, (long long)records);
}

/* parse_run(buf, i, pos, largest, limit, out, client_id, ctx, RingMessage) -> (i, limit): `Ring._parse`'s
 * loop over binary v1 records of one part and no checksum, each appended to `out` as
 * RingMessage([body], client_id, ctx). Only for a ring without checksums. */
static PyObject *
parse_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t v[4];
    if (nargs != 9 || !PyBytes_Check(args[0]) || !PyList_Check(args[5]) || !PyType_Check(args[8])
            || !PyType_IsSubtype((PyTypeObject *)args[8], &PyList_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "parse_run(buf: bytes, i, pos, largest, limit, out: list, client_id, ctx, RingMessage)");
        return NULL;
    }
    if (int64_args(args, 1, 5, v) < 0)
        return NULL;
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    int64_t n = PyBytes_GET_SIZE(args[0]);
    int64_t i = v[0], pos = v[1], largest = v[2], limit = v[3];
    PyObject *out = args[5], *cid = args[6], *ctx = args[7];
    PyTypeObject *message_t = (PyTypeObject *)args[8];
    if (i < 0 || pos < 0)
        return Py_BuildValue("(LL)", (long long)i, (long long)limit);
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL)
        return NULL;
    while (i < n && limit > 0 && n - i >= REC_MIN) {
        uint32_t size;
        uint16_t nparts, flags;
        uint64_t end;
        memcpy(&size, b + i, 4);
        memcpy(&nparts, b + i + 4, 2);
        memcpy(&flags, b + i + 6, 2);
        int64_t rec = (int64_t)record_len(size);
        if ((int64_t)size > largest || i + rec > n)
            break;
        memcpy(&end, b + i + rec - 8, 8);
        if (end != (uint64_t)(pos + i + rec) || flags != REC_FLAGS_BINARY_V1 || nparts != 1)
            break;
        PyObject *body = PyBytes_FromStringAndSize((const char *)b + i + REC_HEADER, size);
        /* RingMessage([body]) with its slots set, without its Python-level __init__ */
        PyObject *message = body == NULL ? NULL : PyList_Type.tp_new(message_t, empty, NULL);
        if (message == NULL || PyList_Append(message, body) < 0 || PyObject_SetAttr(message, s_client_id, cid) < 0
                || PyObject_SetAttr(message, s_ctx, ctx) < 0 || PyList_Append(out, message) < 0) {
            Py_XDECREF(body);
            Py_XDECREF(message);
            Py_DECREF(empty);
            return NULL;
        }
        Py_DECREF(body);
        Py_DECREF(message);
        i += rec;
        limit--;
    }
    Py_DECREF(empty);
    return Py_BuildValue("(LL)", (long long)i, (long long)limit);
}

static PyMethodDef module_methods[] = {
    {"binary_frame", (PyCFunction)(void (*)(void))binary_frame, METH_FASTCALL,
     "binary_frame(body, client_id_json, kinds_json) -> bytes: a binary v1 body as its JSON envelope."},
    {"scan_run", (PyCFunction)(void (*)(void))scan_run, METH_FASTCALL,
     "scan_run(buf, i, pos, off, cap, largest, budget, records) -> (i, records): Ring._scan's common records."},
    {"parse_run", (PyCFunction)(void (*)(void))parse_run, METH_FASTCALL,
     "parse_run(buf, i, pos, largest, limit, out, client_id, ctx, RingMessage) -> (i, limit): Ring._parse's."},
    {"ring_event", (PyCFunction)(void (*)(void))ring_event, METH_FASTCALL,
     "ring_event(body, ctx) -> (frame, env or None): a binary v1 body as its JSON envelope, and that decoded."},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "client._fastemit",
                                       "Client.emit's common case and the binary record decoder, in C.", -1,
                                       module_methods};

PyMODINIT_FUNC
PyInit__fastemit(void)
{
    PyObject *orjson = PyImport_ImportModule("orjson");
    if (orjson == NULL)
        return NULL;
    dumps = PyObject_GetAttrString(orjson, "dumps");
    Py_DECREF(orjson);
    if (dumps == NULL)
        return NULL;
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_seq, "_seq");
    INTERN(s_transport, "_transport");
    INTERN(s_next_stats, "_next_stats_ns");
    INTERN(s_max_event, "max_event_bytes");
    INTERN(s_pos, "_pos");
    INTERN(s_read, "_read");
    INTERN(s_ack, "_ack");
    INTERN(s_answered, "_answered");
    INTERN(s_wake, "_wake");
    INTERN(s_mm, "_mm");
    INTERN(s_rang, "_rang_unadopted");
    INTERN(s_next_look, "_next_look");
    INTERN(s_transport_failed, "_transport_failed");
    INTERN(kw_key, "key");
    INTERN(kw_ref, "ref");
    INTERN(kw_blob, "blob");
    INTERN(s_client_id, "client_id");
    INTERN(s_ctx, "ctx");
    if (PyType_Ready(&EmitterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Emitter", (PyObject *)&EmitterType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
