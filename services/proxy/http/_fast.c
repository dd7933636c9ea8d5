/* The HTTP fast path in C: the same decisions as the regular expressions in parser.py, in one pass.
 *
 * Two functions, each the C twin of a pure-Python function in services/proxy/http/fast.py (which is
 * the reference and the fallback when this module is not built):
 *
 *   request(data, max_target, max_head) -> (head, host) | None
 *       ``data`` is exactly one plain HTTP/1.1 request head (see fast.py for "plain"): ``head`` is
 *       ``data`` without its blank line, ``host`` the Host value. Anything else: None (the general
 *       path decides).
 *   response(data, via_end) -> (status, out, missing, body_at) | None
 *       ``data`` starts with a plain response head framed by Content-Length: ``out`` is the head
 *       with its ``Connection: keep-alive`` lines removed, ``via_end`` appended, then the body bytes
 *       of this read up to the length; ``missing`` is the length minus the body bytes present
 *       (0: complete, < 0: bytes beyond the response, > 0: more to come, and then ``out`` is the
 *       head only and the body starts at ``body_at`` in ``data``).
 *
 * Safety: every read is bounds-checked against the input's length; the module only reads its
 * inputs and allocates its outputs. Each function is one left-to-right scan (linear in its input),
 * with no backtracking. Whenever in doubt it answers None: the general path is always correct, and
 * tests/unit/proxy/test_fast_path.py proves this module, its Python twin and the general path agree.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

/* Character classes, one bit each, in a 256-entry table. */
#define C_TOKEN 0x01   /* RFC 9110 tchar */
#define C_VCHAR 0x02   /* visible characters and obs-text: not 0x00-0x20, 0x7f */
#define C_TARGET 0x04  /* what a forwarded target may hold: 0x21-0x7e but "#" */
#define C_REGNAME 0x08 /* a Host reg-name character (RFC 3986 unreserved, sub-delims, "%") */
#define C_IPLIT 0x10   /* inside "[...]" of an IP literal */
#define C_RAW 0x20     /* a field value as relayed: not a CTL but HTAB */
#define C_DIGIT 0x40

static unsigned char cls[256];

static void init_classes(void) {
    for (int c = 0; c < 256; c++) {
        unsigned char v = 0;
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (alnum || (c && strchr("!#$%&'*+-.^_`|~", c))) v |= C_TOKEN;
        if (c > 0x20 && c != 0x7f) v |= C_VCHAR;
        if (c >= 0x21 && c <= 0x7e && c != '#') v |= C_TARGET;
        if (alnum || (c && strchr("-._~%!$&'()*+;=", c))) v |= C_REGNAME;
        if (alnum || (c && strchr(":.%-_~", c))) v |= C_IPLIT;
        if (c == '\t' || (c >= 0x20 && c != 0x7f)) v |= C_RAW;
        if (c >= '0' && c <= '9') v |= C_DIGIT;
        cls[c] = v;
    }
}

/* Case-insensitive compare of s[0..n) with a lowercase literal of the same length. */
static int lower_eq(const unsigned char *s, Py_ssize_t n, const char *lit, Py_ssize_t litn) {
    if (n != litn) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z') c += 32;
        if (c != (unsigned char)lit[i]) return 0;
    }
    return 1;
}

static int lower_prefix(const unsigned char *s, Py_ssize_t n, const char *lit, Py_ssize_t litn) {
    return n >= litn && lower_eq(s, litn, lit, litn);
}

#define EQ(s, n, lit) lower_eq((s), (n), (lit), (Py_ssize_t)sizeof(lit) - 1)
#define PREFIX(s, n, lit) lower_prefix((s), (n), (lit), (Py_ssize_t)sizeof(lit) - 1)

/* Request field names the fast path leaves to the general one (parser._REQUEST_SPECIAL). */
static int request_special(const unsigned char *s, Py_ssize_t n) {
    switch (n) {
        case 2: return EQ(s, n, "te");
        case 3: return EQ(s, n, "via");
        case 4: return EQ(s, n, "host");
        case 6: return EQ(s, n, "expect");
        case 7: return EQ(s, n, "upgrade") || EQ(s, n, "trailer");
        case 9: return EQ(s, n, "forwarded");
        case 10: return EQ(s, n, "connection") || EQ(s, n, "keep-alive") || EQ(s, n, "tracestate");
        case 11: return EQ(s, n, "traceparent");
        case 12: return EQ(s, n, "x-request-id");
        case 14: return EQ(s, n, "content-length");
        case 17: return EQ(s, n, "transfer-encoding");
        default: break;
    }
    return 0;
}

static int request_special_prefix(const unsigned char *s, Py_ssize_t n) {
    return PREFIX(s, n, "proxy-") || PREFIX(s, n, "x-forwarded-");
}

/* Where the parts of a plain request head are (offsets into it). */
typedef struct {
    Py_ssize_t path_at, path_end; /* the target up to its "?" */
    Py_ssize_t host_at, host_len; /* the Host value ... */
    Py_ssize_t name_len;          /* ... and its length without the port */
} request_parts;

/* 1: ``p[0..n)`` is one plain request head (see request()), its parts in ``r``; 0: it is not. */
static int scan_request(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_target, Py_ssize_t max_head,
                        request_parts *r) {
    if (n > max_head || n < 4 || p[n - 1] != '\n' || p[n - 2] != '\r' || p[n - 3] != '\n' || p[n - 4] != '\r')
        return 0;
    Py_ssize_t i = 0;
    /* Request line: method SP "/" target SP "HTTP/1.1" CRLF; not HEAD or CONNECT. */
    while (i < n && (cls[p[i]] & C_TOKEN)) i++;
    if (i == 0 || i >= n || p[i] != ' ') return 0;
    if ((i == 4 && memcmp(p, "HEAD", 4) == 0) || (i == 7 && memcmp(p, "CONNECT", 7) == 0)) return 0;
    i++;
    if (i >= n || p[i] != '/') return 0;
    Py_ssize_t t0 = i, query = -1;
    i++;
    while (i < n && (cls[p[i]] & C_TARGET)) {
        if (p[i] == '?' && query < 0) query = i;
        i++;
    }
    if (i - t0 > max_target) return 0;
    r->path_at = t0;
    r->path_end = query < 0 ? i : query;
    if (n - i < 11 || memcmp(p + i, " HTTP/1.1\r\n", 11) != 0) return 0;
    i += 11;
    Py_ssize_t host_at = -1, host_len = 0;
    /* Field lines until the blank line, which must be the end of data. */
    for (;;) {
        if (i + 1 < n && p[i] == '\r' && p[i + 1] == '\n') {
            if (i + 2 != n || host_at < 0) return 0;
            break;
        }
        Py_ssize_t name = i;
        int underscore = 0;
        while (i < n && (cls[p[i]] & C_TOKEN)) {
            underscore |= p[i] == '_';
            i++;
        }
        Py_ssize_t name_len = i - name;
        if (name_len == 0 || i + 1 >= n || p[i] != ':' || p[i + 1] != ' ') return 0;
        i += 2;
        if (name_len == 4 && EQ(p + name, 4, "host")) {
            if (host_at >= 0) return 0;
            host_at = i;
            if (i < n && p[i] == '[') {
                i++;
                Py_ssize_t lit = i;
                while (i < n && (cls[p[i]] & C_IPLIT)) i++;
                if (i == lit || i >= n || p[i] != ']') return 0;
                i++;
            } else {
                Py_ssize_t reg = i;
                while (i < n && (cls[p[i]] & C_REGNAME)) i++;
                if (i == reg) return 0;
            }
            r->name_len = i - host_at;
            if (i < n && p[i] == ':') {
                i++;
                Py_ssize_t digits = i;
                while (i < n && (cls[p[i]] & C_DIGIT)) i++;
                if (i == digits || i - digits > 5) return 0;
            }
            host_len = i - host_at;
            r->host_at = host_at;
            r->host_len = host_len;
        } else {
            if (underscore || request_special(p + name, name_len) || request_special_prefix(p + name, name_len))
                return 0;
            /* A canonical value: visible runs separated by whitespace, none leading or trailing. */
            if (i >= n || !(cls[p[i]] & C_VCHAR)) return 0;
            for (;;) {
                while (i < n && (cls[p[i]] & C_VCHAR)) i++;
                if (i < n && (p[i] == ' ' || p[i] == '\t')) {
                    while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
                    if (i >= n || !(cls[p[i]] & C_VCHAR)) return 0;
                    continue;
                }
                break;
            }
        }
        if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n') return 0;
        i += 2;
    }
    return 1;
}

static int request_args(PyObject *const *args, Py_ssize_t nargs, const char *usage, Py_ssize_t *max_target,
                        Py_ssize_t *max_head) {
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return 0;
    }
    *max_target = PyLong_AsSsize_t(args[1]);
    *max_head = PyLong_AsSsize_t(args[2]);
    return !((*max_target == -1 || *max_head == -1) && PyErr_Occurred());
}

/* A tuple of new bytes objects, each ``p[at[k]..at[k]+len[k])``; item ``lower`` ASCII-lowercased; item
   ``skip`` left empty for the caller to set (-1: none). */
static PyObject *slices(const unsigned char *p, int count, const Py_ssize_t *at, const Py_ssize_t *len, int lower,
                        int skip) {
    PyObject *result = PyTuple_New(count);
    if (result == NULL) return NULL;
    for (int k = 0; k < count; k++) {
        if (k == skip) continue;
        PyObject *b = PyBytes_FromStringAndSize((const char *)p + at[k], len[k]);
        if (b == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        if (k == lower) {
            char *c = PyBytes_AS_STRING(b);
            for (Py_ssize_t j = 0; j < len[k]; j++)
                if (c[j] >= 'A' && c[j] <= 'Z') c[j] += 32;
        }
        PyTuple_SET_ITEM(result, k, b);
    }
    return result;
}

static PyObject *fast_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Py_ssize_t max_target, max_head;
    if (!request_args(args, nargs, "request(data: bytes, max_target: int, max_head: int)", &max_target, &max_head))
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    request_parts r;
    if (!scan_request(p, n, max_target, max_head, &r)) Py_RETURN_NONE;
    Py_ssize_t at[2] = {0, r.host_at}, len[2] = {n - 2, r.host_len};
    return slices(p, 2, at, len, -1, -1);
}

#define N_METHODS 7
static PyObject *methods_seen[N_METHODS]; /* GET, POST, ... as bytes, made at import */

static PyObject *fast_request_routed(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Py_ssize_t max_target, max_head;
    if (!request_args(args, nargs, "request_routed(data: bytes, max_target: int, max_head: int)", &max_target,
                      &max_head))
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    request_parts r;
    if (!scan_request(p, n, max_target, max_head, &r)) Py_RETURN_NONE;
    /* The path's first segment: up to its second "/" (the route table's first key). */
    Py_ssize_t segment_end = r.path_at + 1;
    while (segment_end < r.path_end && p[segment_end] != '/') segment_end++;
    Py_ssize_t at[6] = {0, r.host_at, r.host_at, r.path_at, 0, r.path_at};
    Py_ssize_t len[6] = {n - 2, r.host_len, r.name_len, r.path_end - r.path_at, r.path_at - 1, segment_end - r.path_at};
    PyObject *result = slices(p, 6, at, len, 2, 4);
    if (result == NULL) return NULL;
    /* The method (item 4): one shared object for the common ones, a new one for others. */
    PyObject *method = NULL;
    for (int k = 0; k < N_METHODS && method == NULL; k++)
        if (PyBytes_GET_SIZE(methods_seen[k]) == len[4] && memcmp(PyBytes_AS_STRING(methods_seen[k]), p, len[4]) == 0) {
            method = methods_seen[k];
            Py_INCREF(method);
        }
    if (method == NULL && (method = PyBytes_FromStringAndSize((const char *)p, len[4])) == NULL) {
        Py_DECREF(result); /* (a tuple with an empty slot is freed safely) */
        return NULL;
    }
    PyTuple_SET_ITEM(result, 4, method);
    return result;
}

/* request_route(hosts, data, max_target, max_head) -> (head, host, host_name, path, method, route) | None:
   request_routed() with the route table's fast lookup done here: ``route`` is
   ``hosts[host_name][segment]`` (``RouteTable.hosts``: dicts whose __missing__ answers the other hosts
   and segments), the caller resolving it when it is ``deferred``. One call instead of a method call
   and two subscripts on the hot path. */
static PyObject *fast_request_route(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "request_route(hosts, data: bytes, max_target: int, max_head: int)");
        return NULL;
    }
    PyObject *result = fast_request_routed(self, args + 1, 3);
    if (result == NULL || result == Py_None) return result;
    PyObject *plan = PyObject_GetItem(args[0], PyTuple_GET_ITEM(result, 2));
    if (plan == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    PyObject *route = PyObject_GetItem(plan, PyTuple_GET_ITEM(result, 5));
    Py_DECREF(plan);
    if (route == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    /* (the tuple is new and ours alone: its last item, the segment, is replaced by the route) */
    PyObject *segment = PyTuple_GET_ITEM(result, 5);
    PyTuple_SET_ITEM(result, 5, route);
    Py_DECREF(segment);
    return result;
}

/* Response names that are not relayed as they are (parser._RESPONSE_SPECIAL). */
static int response_special(const unsigned char *s, Py_ssize_t n) {
    int special = 0;
    switch (n) {
        case 2: special = EQ(s, n, "te"); break;
        case 7: special = EQ(s, n, "trailer") || EQ(s, n, "upgrade"); break;
        case 10: special = EQ(s, n, "connection") || EQ(s, n, "keep-alive"); break;
        case 14: special = EQ(s, n, "content-length"); break;
        case 17: special = EQ(s, n, "transfer-encoding"); break;
        default: break;
    }
    return special || PREFIX(s, n, "proxy-");
}

#define MAX_STRIPPED 8

static PyObject *fast_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "response(data: bytes, via_end: bytes)");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    /* Status line: "HTTP/1.1 " [2-5]DD SP reason, not 204 or 304. */
    if (n < 13 || memcmp(p, "HTTP/1.1 ", 9) != 0) Py_RETURN_NONE;
    if (p[9] < '2' || p[9] > '5' || !(cls[p[10]] & C_DIGIT) || !(cls[p[11]] & C_DIGIT) || p[12] != ' ')
        Py_RETURN_NONE;
    int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (status == 204 || status == 304) Py_RETURN_NONE;
    Py_ssize_t i = 13;
    while (i < n && (cls[p[i]] & C_RAW)) i++;
    /* Field lines, each matched with the CRLF before it; the head ends at CRLF CRLF. */
    Py_ssize_t strip_at[MAX_STRIPPED], strip_end[MAX_STRIPPED];
    int stripped = 0;
    long long length = -1;
    for (;;) {
        if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n') Py_RETURN_NONE;
        if (i + 3 < n && p[i + 2] == '\r' && p[i + 3] == '\n') break;
        Py_ssize_t line = i;
        i += 2;
        Py_ssize_t name = i;
        while (i < n && (cls[p[i]] & C_TOKEN)) i++;
        Py_ssize_t name_len = i - name;
        if (name_len == 0 || i >= n || p[i] != ':') Py_RETURN_NONE;
        i++;
        if (!response_special(p + name, name_len)) {
            while (i < n && (cls[p[i]] & C_RAW)) i++;
            continue;
        }
        while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
        if (name_len == 14 && EQ(p + name, 14, "content-length")) {
            if (length >= 0) Py_RETURN_NONE;
            Py_ssize_t digits = i;
            long long v = 0;
            while (i < n && (cls[p[i]] & C_DIGIT)) {
                v = v * 10 + (p[i] - '0');
                i++;
                if (i - digits > 18) Py_RETURN_NONE;
            }
            if (i == digits) Py_RETURN_NONE;
            length = v;
        } else if (name_len == 10 && EQ(p + name, 10, "connection")) {
            if (n - i < 10 || !EQ(p + i, 10, "keep-alive") || stripped == MAX_STRIPPED) Py_RETURN_NONE;
            i += 10;
            strip_at[stripped] = line;
            while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
            strip_end[stripped++] = i;
            continue;
        } else {
            Py_RETURN_NONE;
        }
        while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
    }
    if (length < 0) Py_RETURN_NONE;
    Py_ssize_t head_end = i, body_at = i + 4;
    Py_ssize_t present = n - body_at;
    long long missing = length - (long long)present;
    Py_ssize_t body_len = missing > 0 ? 0 : (Py_ssize_t)length;
    Py_ssize_t head_len = head_end;
    for (int k = 0; k < stripped; k++) head_len -= strip_end[k] - strip_at[k];
    Py_ssize_t via_len = PyBytes_GET_SIZE(args[1]);
    PyObject *out = PyBytes_FromStringAndSize(NULL, head_len + via_len + body_len);
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    Py_ssize_t from = 0;
    for (int k = 0; k < stripped; k++) {
        memcpy(o, p + from, strip_at[k] - from);
        o += strip_at[k] - from;
        from = strip_end[k];
    }
    memcpy(o, p + from, head_end - from);
    o += head_end - from;
    memcpy(o, PyBytes_AS_STRING(args[1]), via_len);
    o += via_len;
    if (body_len) memcpy(o, p + body_at, body_len);
    PyObject *result = PyTuple_New(4);
    PyObject *st = PyLong_FromLong(status);
    PyObject *mi = PyLong_FromLongLong(missing);
    PyObject *at = PyLong_FromSsize_t(missing > 0 ? body_at : 0);
    if (result == NULL || st == NULL || mi == NULL || at == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(st);
        Py_XDECREF(mi);
        Py_XDECREF(at);
        Py_DECREF(out);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, st);
    PyTuple_SET_ITEM(result, 1, out);
    PyTuple_SET_ITEM(result, 2, mi);
    PyTuple_SET_ITEM(result, 3, at);
    return result;
}

/* -- the fast path's counters ---------------------------------------------------------------------
 *
 *   Tally(): what one backend's (or route's) fast-path responses add up to: responses per status class
 *       and latency bucket, their latency sum, request and response bytes. C fields, read by /metrics
 *       at scrape time (``counts()``, ``sum``, ``request_bytes``, ``response_bytes``; the last three
 *       writable: the general path adds to them too).
 *   tally(backend, route, status, latency, request_bytes, out) -> None
 *       One response of the fast path: ``backend`` (a Tally) counts it with its bytes (``len(out)``
 *       sent), ``route`` (a Tally or None) counts it too. One call instead of a dozen attribute
 *       updates on the hot path. The buckets are stats.py's LATENCY_BUCKETS (a test holds them equal).
 */
#define N_CLASSES 7
#define N_BOUNDS 15
#define N_SLOTS (N_BOUNDS + 1)
static const double bounds[N_BOUNDS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25,   0.5,   1.0,    2.5,   5.0,  10.0,  30.0};

typedef struct {
    PyObject_HEAD
    long long counts[N_CLASSES * N_SLOTS];
    double sum;
    long long request_bytes, response_bytes;
} Tally;

static PyTypeObject TallyType;

static PyObject *tally_counts(PyObject *self, PyObject *unused) {
    (void)unused;
    Tally *t = (Tally *)self;
    PyObject *out = PyList_New(N_CLASSES * N_SLOTS);
    if (out == NULL) return NULL;
    for (int i = 0; i < N_CLASSES * N_SLOTS; i++) {
        PyObject *v = PyLong_FromLongLong(t->counts[i]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyMethodDef tally_methods[] = {
    {"counts", tally_counts, METH_NOARGS, "counts() -> list: responses per class * SLOTS + latency bucket."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef tally_members[] = {
    {"sum", T_DOUBLE, offsetof(Tally, sum), 0, "latency sum (seconds)"},
    {"request_bytes", T_LONGLONG, offsetof(Tally, request_bytes), 0, "client bytes of the requests"},
    {"response_bytes", T_LONGLONG, offsetof(Tally, response_bytes), 0, "bytes sent to clients"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TallyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "services.proxy.http._fast.Tally",
    .tp_basicsize = sizeof(Tally),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A backend's or route's fast-path counters.",
    .tp_new = PyType_GenericNew,
    .tp_methods = tally_methods,
    .tp_members = tally_members,
};

static inline void tally_add(Tally *t, int slot, double latency) {
    t->counts[slot]++;
    t->sum += latency;
}

static PyObject *fast_tally(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6 || Py_TYPE(args[0]) != &TallyType || (args[1] != Py_None && Py_TYPE(args[1]) != &TallyType) ||
        !PyLong_Check(args[2]) || !PyFloat_Check(args[3]) || !PyLong_Check(args[4]) || !PyBytes_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "tally(backend: Tally, route: Tally | None, status: int, latency: float, request_bytes: int, "
                        "out: bytes)");
        return NULL;
    }
    long status = PyLong_AsLong(args[2]);
    long long in = PyLong_AsLongLong(args[4]);
    if ((status == -1 || in == -1) && PyErr_Occurred()) return NULL;
    double latency = PyFloat_AS_DOUBLE(args[3]);
    int bucket = 0; /* bisect_left: the first bound >= latency (N_BOUNDS: above them all) */
    while (bucket < N_BOUNDS && bounds[bucket] < latency) bucket++;
    int klass = status >= 100 && status < 600 ? (int)(status / 100) : 0;
    int slot = klass * N_SLOTS + bucket;
    Tally *b = (Tally *)args[0];
    tally_add(b, slot, latency);
    b->request_bytes += in;
    b->response_bytes += PyBytes_GET_SIZE(args[5]);
    if (args[1] != Py_None) tally_add((Tally *)args[1], slot, latency);
    Py_RETURN_NONE;
}

/* -- the rate limiter's hot path (services/proxy/limits/limiter.py) ------------------------------------
 *
 *   Entry(): one key's state, the C twin of limiter.EntryPy: the four fields the hot path reads are C
 *       numbers (count, cap, slope, end), the others Python objects; every field is an attribute.
 *   admit(limiter, key, now) -> int
 *       Limiter.admit in C: 0 (admitted, counted) while the key's young entry is armed and under its cap;
 *       else what the limiter's own ``_deny`` / ``_slow`` answer (called from here). One C call instead
 *       of a Python method's thirty bytecodes on every limited request.
 */
typedef struct {
    PyObject_HEAD
    long long count;
    double cap, slope, end;
    PyObject *asked;
    PyObject *claimed;
    PyObject *extra;
    PyObject *g;
    PyObject *gen;
    PyObject *key;
    PyObject *mark;
    PyObject *next_claim;
    PyObject *pend;
    PyObject *pmin;
    PyObject *prev;
    PyObject *queued;
    PyObject *want;
    PyObject *wend;
    PyObject *win;
} Entry;

static PyTypeObject EntryType;

static void entry_dealloc(PyObject *self) {
    Entry *e = (Entry *)self;
    Py_CLEAR(e->asked);
    Py_CLEAR(e->claimed);
    Py_CLEAR(e->extra);
    Py_CLEAR(e->g);
    Py_CLEAR(e->gen);
    Py_CLEAR(e->key);
    Py_CLEAR(e->mark);
    Py_CLEAR(e->next_claim);
    Py_CLEAR(e->pend);
    Py_CLEAR(e->pmin);
    Py_CLEAR(e->prev);
    Py_CLEAR(e->queued);
    Py_CLEAR(e->want);
    Py_CLEAR(e->wend);
    Py_CLEAR(e->win);
    Py_TYPE(self)->tp_free(self);
}

static PyMemberDef entry_members[] = {
    {"count", T_LONGLONG, offsetof(Entry, count), 0, NULL},
    {"cap", T_DOUBLE, offsetof(Entry, cap), 0, NULL},
    {"slope", T_DOUBLE, offsetof(Entry, slope), 0, NULL},
    {"end", T_DOUBLE, offsetof(Entry, end), 0, NULL},
    {"asked", T_OBJECT_EX, offsetof(Entry, asked), 0, NULL},
    {"claimed", T_OBJECT_EX, offsetof(Entry, claimed), 0, NULL},
    {"extra", T_OBJECT_EX, offsetof(Entry, extra), 0, NULL},
    {"g", T_OBJECT_EX, offsetof(Entry, g), 0, NULL},
    {"gen", T_OBJECT_EX, offsetof(Entry, gen), 0, NULL},
    {"key", T_OBJECT_EX, offsetof(Entry, key), 0, NULL},
    {"mark", T_OBJECT_EX, offsetof(Entry, mark), 0, NULL},
    {"next_claim", T_OBJECT_EX, offsetof(Entry, next_claim), 0, NULL},
    {"pend", T_OBJECT_EX, offsetof(Entry, pend), 0, NULL},
    {"pmin", T_OBJECT_EX, offsetof(Entry, pmin), 0, NULL},
    {"prev", T_OBJECT_EX, offsetof(Entry, prev), 0, NULL},
    {"queued", T_OBJECT_EX, offsetof(Entry, queued), 0, NULL},
    {"want", T_OBJECT_EX, offsetof(Entry, want), 0, NULL},
    {"wend", T_OBJECT_EX, offsetof(Entry, wend), 0, NULL},
    {"win", T_OBJECT_EX, offsetof(Entry, win), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "services.proxy.http._fast.Entry",
    .tp_basicsize = sizeof(Entry),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The state of one key of one rate-limit rule (see limiter.py).",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = entry_dealloc,
    .tp_members = entry_members,
};

static PyObject *str_young, *str_deny, *str_slow, *zero;

static PyObject *fast_admit(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyFloat_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "admit(limiter, key, now: float)");
        return NULL;
    }
    PyObject *young = PyObject_GetAttr(args[0], str_young);
    if (young == NULL) return NULL;
    if (!PyDict_Check(young)) {
        Py_DECREF(young);
        PyErr_SetString(PyExc_TypeError, "admit: the limiter's _young is not a dict");
        return NULL;
    }
    PyObject *e = PyDict_GetItemWithError(young, args[1]); /* borrowed */
    Py_DECREF(young); /* (the limiter keeps it, and with it e, alive during this call) */
    if (e == NULL && PyErr_Occurred()) return NULL;
    double now = PyFloat_AS_DOUBLE(args[2]);
    if (e != NULL && Py_TYPE(e) == &EntryType) {
        Entry *x = (Entry *)e;
        if (now < x->end) {
            if ((double)x->count + x->slope * now < x->cap) {
                x->count++;
                Py_INCREF(zero);
                return zero;
            }
            return PyObject_CallMethodObjArgs(args[0], str_deny, e, args[2], NULL);
        }
    }
    return PyObject_CallMethodObjArgs(args[0], str_slow, args[1], e != NULL ? e : Py_None, args[2], NULL);
}

/* -- a new trace per request ------------------------------------------------------------------------
 *
 *   trace_head(head, prefix, host, id_prefix, n, via) -> bytes
 *       The fast path's head with a new sampled trace: ``head + prefix + b"X-Forwarded-Host: " + host +
 *       b"\r\nX-Request-ID: " + id_prefix + b"-%x" % n + via + TRACE_ID + b"-" + SPAN_ID + b"-01\r\n\r\n"``,
 *       ``via`` ending with ``traceparent: 00-``; the ids are 128 and 64 random bits in lower-case hex
 *       (xoshiro256**, seeded from os.urandom at import: trace ids need to be unique, not secret). One
 *       allocation, instead of a ``%`` format and three calls (about 400 ns) in Python.
 */
static uint64_t rng[4];

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_random(void) {
    uint64_t result = rotl(rng[1] * 5, 7) * 9, t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return result;
}

static char *put_hex(char *out, uint64_t v) {
    static const char digits[] = "0123456789abcdef";
    for (int k = 60; k >= 0; k -= 4) *out++ = digits[(v >> k) & 15];
    return out;
}

static char *put(char *out, PyObject *b) {
    memcpy(out, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
    return out + PyBytes_GET_SIZE(b);
}

#define LIT(out, s) (memcpy((out), (s), sizeof(s) - 1), (out) + sizeof(s) - 1)

static PyObject *fast_trace_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) || !PyBytes_Check(args[2]) ||
        !PyBytes_Check(args[3]) || !PyLong_Check(args[4]) || !PyBytes_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "trace_head(head: bytes, prefix: bytes, host: bytes, id_prefix: bytes, n: int, via: bytes)");
        return NULL;
    }
    unsigned long long n = PyLong_AsUnsignedLongLong(args[4]);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    char digits[16];
    int nd = 0;
    do {
        digits[nd++] = "0123456789abcdef"[n & 15];
        n >>= 4;
    } while (n);
    static const char xfh[] = "X-Forwarded-Host: ", rid[] = "\r\nX-Request-ID: ", end[] = "-01\r\n\r\n";
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]) + PyBytes_GET_SIZE(args[1]) + (Py_ssize_t)sizeof(xfh) - 1 +
                      PyBytes_GET_SIZE(args[2]) + (Py_ssize_t)sizeof(rid) - 1 + PyBytes_GET_SIZE(args[3]) + 1 + nd +
                      PyBytes_GET_SIZE(args[5]) + 32 + 1 + 16 + (Py_ssize_t)sizeof(end) - 1;
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL) return NULL;
    char *out = PyBytes_AS_STRING(result);
    out = put(out, args[0]);
    out = put(out, args[1]);
    out = LIT(out, xfh);
    out = put(out, args[2]);
    out = LIT(out, rid);
    out = put(out, args[3]);
    *out++ = '-';
    while (nd) *out++ = digits[--nd];
    out = put(out, args[5]);
    uint64_t hi = next_random(), lo = next_random(), span = next_random();
    if (!(hi | lo)) lo = 1; /* (all-zero ids are invalid: W3C Trace Context) */
    if (!span) span = 1;
    out = put_hex(out, hi);
    out = put_hex(out, lo);
    *out++ = '-';
    out = put_hex(out, span);
    out = LIT(out, end);
    return result;
}

/* Outbox: services/proxy/outbox.py's class in C (see there for why and for the order argument).
 * ``items`` is a list: transport, data, transport, data, ... ``write`` appends a pair and, for the
 * first pair of a turn, schedules ``flush`` with the loop's call_soon; ``flush`` takes the list, puts
 * a new one in its place, and writes each pair whose transport is not closing. A write that raises
 * does not stop the others: the first error is raised once all were tried. */
typedef struct {
    PyObject_HEAD
    PyObject *call_soon;
    PyObject *items;
} Outbox;

static PyObject *str_flush, *str_is_closing, *str_write, *str_call_soon;

static int outbox_init(PyObject *op, PyObject *args, PyObject *kwds) {
    Outbox *self = (Outbox *)op;
    PyObject *loop;
    static char *kwlist[] = {"loop", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Outbox", kwlist, &loop)) return -1;
    PyObject *call_soon = PyObject_GetAttr(loop, str_call_soon);
    if (call_soon == NULL) return -1;
    PyObject *items = PyList_New(0);
    if (items == NULL) {
        Py_DECREF(call_soon);
        return -1;
    }
    Py_XSETREF(self->call_soon, call_soon);
    Py_XSETREF(self->items, items);
    return 0;
}

static int outbox_traverse(PyObject *op, visitproc visit, void *arg) {
    Outbox *self = (Outbox *)op;
    Py_VISIT(self->call_soon);
    Py_VISIT(self->items);
    return 0;
}

static int outbox_clear(PyObject *op) {
    Outbox *self = (Outbox *)op;
    Py_CLEAR(self->call_soon);
    Py_CLEAR(self->items);
    return 0;
}

static void outbox_dealloc(PyObject *op) {
    PyObject_GC_UnTrack(op);
    outbox_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *outbox_write(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
    Outbox *self = (Outbox *)op;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write(transport, data)");
        return NULL;
    }
    if (self->items == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Outbox not initialised");
        return NULL;
    }
    if (PyList_GET_SIZE(self->items) == 0) {
        PyObject *flush = PyObject_GetAttr(op, str_flush);
        if (flush == NULL) return NULL;
        PyObject *handle = PyObject_CallOneArg(self->call_soon, flush);
        Py_DECREF(flush);
        if (handle == NULL) return NULL;
        Py_DECREF(handle);
    }
    if (PyList_Append(self->items, args[0]) < 0 || PyList_Append(self->items, args[1]) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *outbox_flush(PyObject *op, PyObject *unused) {
    (void)unused;
    Outbox *self = (Outbox *)op;
    PyObject *items = self->items;
    if (items == NULL || PyList_GET_SIZE(items) == 0) Py_RETURN_NONE;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return NULL;
    self->items = fresh; /* the old list's reference is ours now */
    PyObject *exc = NULL, *exc_type = NULL, *exc_tb = NULL; /* the first error (3.11: its three parts) */
    Py_ssize_t n = PyList_GET_SIZE(items);
    for (Py_ssize_t i = 0; i + 1 < n; i += 2) {
        PyObject *transport = PyList_GET_ITEM(items, i), *data = PyList_GET_ITEM(items, i + 1);
        PyObject *closing = PyObject_CallMethodNoArgs(transport, str_is_closing);
        int skip = closing == NULL ? -1 : PyObject_IsTrue(closing);
        Py_XDECREF(closing);
        if (skip == 0) {
            PyObject *r = PyObject_CallMethodOneArg(transport, str_write, data);
            if (r != NULL) {
                Py_DECREF(r);
                continue;
            }
        } else if (skip > 0)
            continue;
        if (exc_type == NULL)
            PyErr_Fetch(&exc_type, &exc, &exc_tb);
        else
            PyErr_Clear();
    }
    Py_DECREF(items);
    if (exc_type != NULL) {
        PyErr_Restore(exc_type, exc, exc_tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef outbox_methods[] = {
    {"write", (PyCFunction)(void (*)(void))outbox_write, METH_FASTCALL,
     "write(transport, data): queue data for transport; sent by flush() (scheduled by the turn's first write)."},
    {"flush", outbox_flush, METH_NOARGS, "flush(): write what is queued, in order, to the transports not closing."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef outbox_members[] = {
    {"items", T_OBJECT, offsetof(Outbox, items), READONLY, "transport, data, ... queued this turn"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject OutboxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "services.proxy.http._fast.Outbox",
    .tp_basicsize = sizeof(Outbox),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Outbox(loop): the hot path's writes, sent together when the loop's turn ends.",
    .tp_new = PyType_GenericNew,
    .tp_init = outbox_init,
    .tp_dealloc = outbox_dealloc,
    .tp_traverse = outbox_traverse,
    .tp_clear = outbox_clear,
    .tp_methods = outbox_methods,
    .tp_members = outbox_members,
};

static PyMethodDef methods[] = {
    {"request", (PyCFunction)(void (*)(void))fast_request, METH_FASTCALL,
     "request(data, max_target, max_head) -> (head, host) | None: one plain request head, whole."},
    {"request_routed", (PyCFunction)(void (*)(void))fast_request_routed, METH_FASTCALL,
     "request_routed(data, max_target, max_head) -> (head, host, host_name, path, method, segment) | None:\n"
     "request() and what routing needs: the Host without its port, lowercased, the target up to its query,\n"
     "the method, and the path's first segment (up to its second '/')."},
    {"request_route", (PyCFunction)(void (*)(void))fast_request_route, METH_FASTCALL,
     "request_route(hosts, data, max_target, max_head) -> (head, host, host_name, path, method, route) | None:\n"
     "request_routed() with route = hosts[host_name][segment] (RouteTable.hosts)."},
    {"response", (PyCFunction)(void (*)(void))fast_response, METH_FASTCALL,
     "response(data, via_end) -> (status, out, missing, body_at) | None: a plain response head."},
    {"trace_head", (PyCFunction)(void (*)(void))fast_trace_head, METH_FASTCALL,
     "trace_head(head, prefix, host, id_prefix, n, via) -> bytes: the fast head with a new sampled trace."},
    {"admit", (PyCFunction)(void (*)(void))fast_admit, METH_FASTCALL,
     "admit(limiter, key, now) -> int: Limiter.admit (0: admitted; else seconds to wait)."},
    {"tally", (PyCFunction)(void (*)(void))fast_tally, METH_FASTCALL,
     "tally(backend, route, status, latency, request_bytes, out) -> None: one fast-path response counted."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fast", "The HTTP fast path in C (see fast.py for its Python twin).", -1, methods,
};

PyMODINIT_FUNC PyInit__fast(void) {
    static const char *names[N_METHODS] = {"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"};
    init_classes();
    for (int k = 0; k < N_METHODS; k++)
        if (methods_seen[k] == NULL && (methods_seen[k] = PyBytes_FromString(names[k])) == NULL) return NULL;
    if ((str_young = PyUnicode_InternFromString("_young")) == NULL ||
        (str_deny = PyUnicode_InternFromString("_deny")) == NULL ||
        (str_slow = PyUnicode_InternFromString("_slow")) == NULL || (zero = PyLong_FromLong(0)) == NULL ||
        (str_flush = PyUnicode_InternFromString("flush")) == NULL ||
        (str_is_closing = PyUnicode_InternFromString("is_closing")) == NULL ||
        (str_write = PyUnicode_InternFromString("write")) == NULL ||
        (str_call_soon = PyUnicode_InternFromString("call_soon")) == NULL)
        return NULL;
    PyObject *os = PyImport_ImportModule("os");
    PyObject *seed = os != NULL ? PyObject_CallMethod(os, "urandom", "i", (int)sizeof(rng)) : NULL;
    Py_XDECREF(os);
    if (seed == NULL) return NULL;
    memcpy(rng, PyBytes_AS_STRING(seed), sizeof(rng));
    Py_DECREF(seed);
    if (!(rng[0] | rng[1] | rng[2] | rng[3])) rng[0] = 1;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *b = PyTuple_New(N_BOUNDS);
    if (b == NULL) goto fail;
    for (int k = 0; k < N_BOUNDS; k++) PyTuple_SET_ITEM(b, k, PyFloat_FromDouble(bounds[k]));
    if (PyModule_AddObject(m, "BUCKETS", b) < 0) {
        Py_DECREF(b);
        goto fail;
    }
    if (PyModule_AddType(m, &EntryType) < 0 || PyModule_AddType(m, &TallyType) < 0 ||
        PyModule_AddType(m, &OutboxType) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
