/* Optional C helper for asgiws.protocols.http: `parse_head`, the common request head in one call.
 *
 * httptools calls into Python once per piece of a head: on_message_begin, on_url, on_header for
 * each field, on_headers_complete, on_message_complete. For a GET of three fields that was 6.3 us
 * of Python, about a quarter of the server's CPU per request. parse_head reads one whole head of
 * the common shape at the start of the bytes it is given and returns what those callbacks
 * gathered, in one call, with the body when a Content-Length body is all there. A head of any
 * other shape it declines (returns None) and httptools parses that request as before, errors and
 * limits included: it accepts a strict subset of what
 * httptools accepts and gives the same result for each, which tests/http/test_head_fastpath.py
 * checks field by field. Without this module (no compiler), every head goes through httptools.
 *
 * The shape taken (RFC 9112 3 and 5):
 *   request-line  = method SP origin-form SP ( "HTTP/1.1" / "HTTP/1.0" ) CRLF
 *   method        = GET / HEAD / POST / PUT / DELETE / OPTIONS / PATCH
 *   origin-form   = "/" *( %x21-7E except "#" )          (the query after the first "?")
 *   field-line    = 1*tchar ":" *( SP / HTAB ) *( %x20-7E / HTAB ) CRLF
 * and exactly one Host field, at most one Content-Length (1*18DIGIT), whose body must be whole in
 * the bytes given. Declined: Transfer-Encoding, Upgrade, Expect, Proxy-Connection, Connection
 * unless it is exactly "close" or "keep-alive", a target, field section, field count or body over
 * the limits (httptools then answers 414, 431 or 413), a request not complete in the bytes given,
 * and anything else.
 * A field value keeps its trailing whitespace, as httptools gives it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static unsigned char TCHAR[256];   /* RFC 9110 5.6.2 token characters */
static unsigned char TARGET[256];  /* bytes taken in an origin-form target */
static unsigned char VALUE[256];   /* bytes taken in a field value */

static struct {
    const char *name;
    Py_ssize_t size;
    PyObject *text;  /* the scope's "method" (interned) */
} METHODS[] = {
    {"GET", 3, NULL}, {"HEAD", 4, NULL}, {"POST", 4, NULL}, {"PUT", 3, NULL},
    {"DELETE", 6, NULL}, {"OPTIONS", 7, NULL}, {"PATCH", 5, NULL},
};
#define METHOD_COUNT (sizeof(METHODS) / sizeof(METHODS[0]))

static PyObject *VERSION_10, *VERSION_11, *EMPTY_BYTES;

#define SAME(p, n, literal) ((n) == (Py_ssize_t)sizeof(literal) - 1 && memcmp((p), (literal), (n)) == 0)

static int
same_ignoring_case(const unsigned char *p, Py_ssize_t n, const char *lower, Py_ssize_t size)
{
    if (n != size)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if ((p[i] | 0x20) != (unsigned char)lower[i])
            return 0;
    return 1;
}

/* What a field's lowercased name asks of the head. */
enum field_kind { FIELD_PLAIN, FIELD_HOST, FIELD_CONNECTION, FIELD_CONTENT_LENGTH, FIELD_FORWARDED, FIELD_DECLINE };

static enum field_kind
field_kind(const char *name, Py_ssize_t n)
{
    switch (name[0]) {
    case 'h':
        return SAME(name, n, "host") ? FIELD_HOST : FIELD_PLAIN;
    case 'c':
        if (SAME(name, n, "connection"))
            return FIELD_CONNECTION;
        return SAME(name, n, "content-length") ? FIELD_CONTENT_LENGTH : FIELD_PLAIN;
    case 't':
        return SAME(name, n, "transfer-encoding") ? FIELD_DECLINE : FIELD_PLAIN;
    case 'u':
        return SAME(name, n, "upgrade") ? FIELD_DECLINE : FIELD_PLAIN;
    case 'e':
        return SAME(name, n, "expect") ? FIELD_DECLINE : FIELD_PLAIN;
    case 'p':
        /* llhttp reads Proxy-Connection as Connection */
        return SAME(name, n, "proxy-connection") ? FIELD_DECLINE : FIELD_PLAIN;
    case 'x':
        /* Every X-Forwarded-* name is flagged (a superset of utils.FORWARDED_FIELDS): the rewrite
         * looks for the fields it reads and leaves the scope as it is when none is there. */
        return n > 12 && memcmp(name, "x-forwarded-", 12) == 0 ? FIELD_FORWARDED : FIELD_PLAIN;
    default:
        return FIELD_PLAIN;
    }
}

/* What the fields said, beyond the list of them. */
struct field_notes {
    Py_ssize_t content_length;  /* -1: no Content-Length field */
    int forwarded, close, keep_alive;
};

/* The fields from p (the byte after the request line's CRLF) to the empty line, appended to
 * `fields`; returns the offset past the empty line, or -1 to decline, -2 on a Python error. */
static Py_ssize_t
parse_fields(const unsigned char *buf, Py_ssize_t p, Py_ssize_t end, PyObject *fields,
             Py_ssize_t max_size, Py_ssize_t max_count, struct field_notes *notes)
{
    Py_ssize_t size = 0, count = 0, hosts = 0;

    for (;;) {
        if (p + 1 >= end)
            return -1;  /* not complete in these bytes */
        if (buf[p] == '\r') {
            if (buf[p + 1] != '\n' || hosts != 1)
                return -1;
            return p + 2;
        }
        Py_ssize_t name_start = p;
        while (p < end && TCHAR[buf[p]])
            p++;
        Py_ssize_t name_size = p - name_start;
        if (p >= end || buf[p] != ':' || name_size == 0)
            return -1;
        p++;
        while (p < end && (buf[p] == ' ' || buf[p] == '\t'))
            p++;
        Py_ssize_t value_start = p;
        while (p < end && VALUE[buf[p]])
            p++;
        Py_ssize_t value_size = p - value_start;
        if (p + 1 >= end || buf[p] != '\r' || buf[p + 1] != '\n')
            return -1;
        p += 2;
        /* head.py's on_header accounting: a name, a value and 4 bytes of ": " and CRLF */
        size += name_size + value_size + 4;
        if (size > max_size || count >= max_count)
            return -1;
        count++;

        PyObject *name = PyBytes_FromStringAndSize(NULL, name_size);
        if (name == NULL)
            return -2;
        char *lower = PyBytes_AS_STRING(name);
        for (Py_ssize_t i = 0; i < name_size; i++) {
            unsigned char c = buf[name_start + i];
            lower[i] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
        }
        const unsigned char *value_bytes = buf + value_start;
        switch (field_kind(lower, name_size)) {
        case FIELD_DECLINE:
            Py_DECREF(name);
            return -1;
        case FIELD_HOST:
            hosts++;
            break;
        case FIELD_CONNECTION:
            if (same_ignoring_case(value_bytes, value_size, "close", 5))
                notes->close = 1;
            else if (same_ignoring_case(value_bytes, value_size, "keep-alive", 10))
                notes->keep_alive = 1;
            else {
                Py_DECREF(name);
                return -1;
            }
            break;
        case FIELD_CONTENT_LENGTH:
            /* Digits only, once (llhttp refuses a second one, and a sign or a space is not ours to
             * judge); 18 digits cannot overflow. */
            if (notes->content_length >= 0 || value_size == 0 || value_size > 18) {
                Py_DECREF(name);
                return -1;
            }
            notes->content_length = 0;
            for (Py_ssize_t i = 0; i < value_size; i++) {
                if (value_bytes[i] < '0' || value_bytes[i] > '9') {
                    Py_DECREF(name);
                    return -1;
                }
                notes->content_length = notes->content_length * 10 + (value_bytes[i] - '0');
            }
            break;
        case FIELD_FORWARDED:
            notes->forwarded = 1;
            break;
        case FIELD_PLAIN:
            break;
        }
        PyObject *value = PyBytes_FromStringAndSize((const char *)value_bytes, value_size);
        if (value == NULL) {
            Py_DECREF(name);
            return -2;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            return -2;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        int failed = PyList_Append(fields, pair);
        Py_DECREF(pair);
        if (failed)
            return -2;
    }
}

/* buf[start:end] as bytes; the one empty bytes object when it is empty (most queries and bodies). */
static PyObject *
slice_bytes(const unsigned char *buf, Py_ssize_t start, Py_ssize_t end)
{
    if (end > start)
        return PyBytes_FromStringAndSize((const char *)buf + start, end - start);
    Py_INCREF(EMPTY_BYTES);
    return EMPTY_BYTES;
}

/* parse_head(data, start, end, max_target, max_fields_size, max_fields, max_body)
 *   -> (request_end, method, raw_path, query, http_version, headers, forwarded, keep_alive,
 *       content_length, body) | None
 * max_body < 0: no limit. content_length is None without the field. */
static PyObject *
parse_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "parse_head takes 7 arguments");
        return NULL;
    }
    Py_ssize_t limits[6];
    for (int i = 0; i < 6; i++) {
        limits[i] = PyLong_AsSsize_t(args[i + 1]);
        if (limits[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    Py_ssize_t start = limits[0], end = limits[1];
    Py_ssize_t max_target = limits[2], max_size = limits[3], max_count = limits[4], max_body = limits[5];
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (start < 0 || end > view.len || start > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "parse_head: start and end must lie within data");
        return NULL;
    }
    const unsigned char *buf = view.buf;
    PyObject *result = NULL, *fields = NULL, *raw_path = NULL, *query = NULL, *body = NULL;
    PyObject *content_length = NULL;
    Py_ssize_t p = start;

    /* method SP */
    Py_ssize_t space = p;
    while (space < end && space - p < 8 && buf[space] != ' ')
        space++;
    if (space >= end || buf[space] != ' ')
        goto decline;
    PyObject *method = NULL;
    for (size_t i = 0; i < METHOD_COUNT; i++)
        if (METHODS[i].size == space - p && memcmp(buf + p, METHODS[i].name, METHODS[i].size) == 0) {
            method = METHODS[i].text;
            break;
        }
    if (method == NULL)
        goto decline;
    p = space + 1;

    /* origin-form SP */
    Py_ssize_t target_start = p, query_mark = -1;
    if (p >= end || buf[p] != '/')
        goto decline;
    while (p < end && TARGET[buf[p]]) {
        if (buf[p] == '?' && query_mark < 0)
            query_mark = p;
        p++;
    }
    if (p >= end || buf[p] != ' ' || p - target_start > max_target)
        goto decline;
    Py_ssize_t path_end = query_mark < 0 ? p : query_mark;

    /* HTTP-version CRLF */
    if (end - (p + 1) < 10 || memcmp(buf + p + 1, "HTTP/1.", 7) != 0 || buf[p + 9] != '\r'
        || buf[p + 10] != '\n' || (buf[p + 8] != '1' && buf[p + 8] != '0'))
        goto decline;
    PyObject *version = buf[p + 8] == '1' ? VERSION_11 : VERSION_10;
    Py_ssize_t query_start = query_mark < 0 ? p : query_mark + 1, query_end = p;
    p += 11;

    struct field_notes notes = {-1, 0, 0, 0};
    fields = PyList_New(0);
    if (fields == NULL)
        goto error;
    Py_ssize_t head_end = parse_fields(buf, p, end, fields, max_size, max_count, &notes);
    if (head_end == -2)
        goto error;
    if (head_end < 0)
        goto decline;
    Py_ssize_t request_end = head_end;
    if (notes.content_length >= 0) {
        if ((max_body >= 0 && notes.content_length > max_body) || notes.content_length > end - head_end)
            goto decline;  /* over the limit (413), or not all read yet */
        request_end = head_end + notes.content_length;
    }
    /* llhttp_should_keep_alive for a request: HTTP/1.1 unless "close", HTTP/1.0 only with "keep-alive" */
    int keep_alive = version == VERSION_11 ? !notes.close : notes.keep_alive;

    if ((raw_path = slice_bytes(buf, target_start, path_end)) == NULL
        || (query = slice_bytes(buf, query_start, query_end)) == NULL
        || (body = slice_bytes(buf, head_end, request_end)) == NULL)
        goto error;
    if (notes.content_length >= 0)
        content_length = PyLong_FromSsize_t(notes.content_length);
    else {
        content_length = Py_None;
        Py_INCREF(content_length);
    }
    if (content_length == NULL)
        goto error;
    result = Py_BuildValue("(nOOOOOOOOO)", request_end, method, raw_path, query, version, fields,
                           notes.forwarded ? Py_True : Py_False, keep_alive ? Py_True : Py_False,
                           content_length, body);
    goto error;  /* result or NULL: the references below are released either way */

decline:
    result = Py_None;
    Py_INCREF(result);
error:
    Py_XDECREF(fields);
    Py_XDECREF(raw_path);
    Py_XDECREF(query);
    Py_XDECREF(body);
    Py_XDECREF(content_length);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL,
     "parse_head(data, start, end, max_target, max_fields_size, max_fields, max_body) -> tuple | None\n\n"
     "The request of the common shape at data[start:end], or None to leave it to httptools."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "asgiws.protocols.http._head", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__head(void)
{
    const char *token_marks = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        TCHAR[c] = alnum || (c != 0 && strchr(token_marks, c) != NULL);
        TARGET[c] = c >= 0x21 && c <= 0x7e && c != '#';
        VALUE[c] = (c >= 0x20 && c <= 0x7e) || c == '\t';
    }
    for (size_t i = 0; i < METHOD_COUNT; i++)
        if ((METHODS[i].text = PyUnicode_InternFromString(METHODS[i].name)) == NULL)
            return NULL;
    VERSION_10 = PyUnicode_InternFromString("1.0");
    VERSION_11 = PyUnicode_InternFromString("1.1");
    EMPTY_BYTES = PyBytes_FromStringAndSize(NULL, 0);
    if (VERSION_10 == NULL || VERSION_11 == NULL || EMPTY_BYTES == NULL)
        return NULL;
    return PyModule_Create(&module);
}
