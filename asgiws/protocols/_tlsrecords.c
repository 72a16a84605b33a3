/* Optional C helper for asgiws.protocols.tls_records: `Records`, the twin of `PyRecords`.
 *
 * Why: a wss 1 MiB echo spent a quarter of the server's CPU in libpython around OpenSSL, not in it:
 * per 16 KiB record, ssl.py's SSLObject.read and .write wrappers, argument parsing, a slice and a
 * bytes object drained from the outgoing BIO, and an SSLWantReadError (with its formatted message)
 * to end every read loop, all of it once per record. Here one call decrypts a socket read's records
 * into the caller's buffer, moving the ciphertext into the incoming BIO a record's worth at a time
 * as OpenSSL asks for it, and one call encrypts a whole message record by record straight from its
 * chunks.
 *
 * How the SSL* is reached: CPython's _ssl.c has begun its _SSLSocket with the same fields since
 * Python 3 (PyObject_HEAD, Socket, ssl, ctx) and its MemoryBIO with (PyObject_HEAD, bio). `bind`
 * checks that on a probe object made by the caller, comparing before following any pointer: its
 * Socket is NULL (an SSLObject over memory BIOs has no socket), its ctx is the very context the
 * probe was made from, and only then SSL_get_rbio/SSL_get_wbio of its ssl are the probe's two BIOs.
 * OpenSSL's functions are looked up in the libssl that _ssl itself loaded (dlopen of _ssl's own
 * file with RTLD_NOLOAD), so both use one library and one error queue. When any of that fails,
 * `bind` raises and the caller keeps the pure-Python twin.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <limits.h>
#include <string.h>

typedef struct ssl_st SSL;
typedef struct bio_st BIO;

/* ssl.h: SSL_get_error's answer when the memory BIO holds no whole record yet. */
#define SSL_ERROR_WANT_READ 2
/* RFC 8446 5.1: a record's plaintext "MUST NOT exceed 2^14 bytes". */
#define MAX_RECORD_PLAINTEXT 16384
/* RFC 8446 5.2: a TLSCiphertext's "length MUST NOT exceed 2^14 + 256 bytes", after its 5-byte header:
 * the most ciphertext moved to the incoming BIO at a time (the BIO keeps its largest size for life). */
#define MAX_RECORD_CIPHERTEXT (5 + 16384 + 256)
/* What a record adds to its plaintext, at most as a first guess: RFC 8446 5.2 allows TLS 1.3 2^14 + 256
 * bytes of ciphertext, plus the 5-byte header (AES-GCM adds 22). TLS 1.2 may add more (RFC 5246
 * 6.2.3: up to 2048): a piece that turns out too small is closed or grown, never overrun. */
#define LIKELY_RECORD_EXPANSION (5 + 256)
/* A long message's ciphertext comes in pieces of four records' size, each its own bytes object: one
 * object for a whole 1 MiB message was a fresh mmap (page faults, zeroing) per message, where
 * these come from the heap's free lists (glibc's mmap threshold starts at 128 KiB). */
#define PIECE (4 * (MAX_RECORD_PLAINTEXT + LIKELY_RECORD_EXPANSION))
/* Messages at least this large are encrypted with the GIL released (as ssl.py's write does for
 * every call): other threads, a thread pool's sync handlers among them, run meanwhile. */
#define RELEASE_GIL_FROM (64 * 1024)

static int (*SSL_read_)(SSL *, void *, int);
static int (*SSL_write_)(SSL *, const void *, int);
static int (*SSL_get_error_)(const SSL *, int);
static int (*SSL_pending_)(const SSL *);
static BIO *(*SSL_get_rbio_)(const SSL *);
static BIO *(*SSL_get_wbio_)(const SSL *);
static int (*BIO_read_)(BIO *, void *, int);
static int (*BIO_write_)(BIO *, const void *, int);
static size_t (*BIO_ctrl_pending_)(BIO *);
static unsigned long (*ERR_peek_last_error_)(void);
static const char *(*ERR_reason_error_string_)(unsigned long);
static void (*ERR_clear_error_)(void);

typedef struct {
    PyObject_HEAD
    PyObject *Socket;
    SSL *ssl;
    PyObject *ctx;
} SSLSocketPrefix;

typedef struct {
    PyObject_HEAD
    BIO *bio;
} MemoryBIOPrefix;

static PyTypeObject *sslsocket_type = NULL;  /* _ssl._SSLSocket, once bound */
static PyTypeObject *memorybio_type = NULL;  /* _ssl.MemoryBIO */
static PyObject *error_factory = NULL;       /* (ssl_error, err_code, reason) -> exception */

/* The exception the ssl module would raise for what OpenSSL said (the factory builds it); the
 * thread's error queue is cleared so that the ssl module's next call starts clean. NULL if the
 * factory failed (its error set). */
static PyObject *
ssl_exception(SSL *ssl, int result)
{
    int ssl_error = SSL_get_error_(ssl, result);
    unsigned long code = ERR_peek_last_error_();
    const char *reason = code ? ERR_reason_error_string_(code) : NULL;
    PyObject *exc;

    exc = PyObject_CallFunction(error_factory, "iks", ssl_error, code, reason);
    ERR_clear_error_();
    return exc;
}

static PyObject *
raise_exception(PyObject *exc)
{
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
raise_ssl_error(SSL *ssl, int result)
{
    return raise_exception(ssl_exception(ssl, result));
}

/* ------------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *sslsock;  /* the SSLObject's _sslobj, kept alive while its SSL* is used */
    SSL *ssl;
    BIO *rbio, *wbio;
    PyObject *deferred;  /* an error met after plaintext was produced: raised by the next call */
} Records;

static int
Records_init(Records *self, PyObject *args, PyObject *kwds)
{
    PyObject *sslobj, *incoming, *outgoing, *sslsock;
    SSL *ssl;
    static char *kwlist[] = {"sslobj", "incoming", "outgoing", NULL};

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:Records", kwlist, &sslobj, &incoming, &outgoing))
        return -1;
    if (sslsocket_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Records: bind() has not succeeded");
        return -1;
    }
    sslsock = PyObject_GetAttrString(sslobj, "_sslobj");
    if (sslsock == NULL)
        return -1;
    if (Py_TYPE(sslsock) != sslsocket_type || Py_TYPE(incoming) != memorybio_type
        || Py_TYPE(outgoing) != memorybio_type) {
        Py_DECREF(sslsock);
        PyErr_SetString(PyExc_TypeError,
                        "Records(sslobj, incoming, outgoing): an ssl.SSLObject and its two MemoryBIOs");
        return -1;
    }
    ssl = ((SSLSocketPrefix *)sslsock)->ssl;
    if (SSL_get_rbio_(ssl) != ((MemoryBIOPrefix *)incoming)->bio
        || SSL_get_wbio_(ssl) != ((MemoryBIOPrefix *)outgoing)->bio) {
        Py_DECREF(sslsock);
        PyErr_SetString(PyExc_ValueError, "Records: these are not the SSLObject's own incoming and outgoing BIOs");
        return -1;
    }
    Py_XSETREF(self->sslsock, sslsock);
    Py_CLEAR(self->deferred);
    self->ssl = ssl;
    self->rbio = ((MemoryBIOPrefix *)incoming)->bio;
    self->wbio = ((MemoryBIOPrefix *)outgoing)->bio;
    return 0;
}

static void
Records_dealloc(Records *self)
{
    Py_XDECREF(self->sslsock);
    Py_XDECREF(self->deferred);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Move the next record's worth of `src` (from `*consumed`) into the incoming BIO. */
static int
feed(Records *self, Py_buffer *src, Py_ssize_t *consumed)
{
    Py_ssize_t slice = src->len - *consumed;

    if (slice > MAX_RECORD_CIPHERTEXT)
        slice = MAX_RECORD_CIPHERTEXT;
    /* A memory BIO grows as needed: its write fails only when memory does. */
    if (BIO_write_(self->rbio, (const char *)src->buf + *consumed, (int)slice) != (int)slice)
        return 0;
    *consumed += slice;
    return 1;
}

/* decrypt_into(ciphertext, buffer) -> (consumed, produced, more): see its docstring below. */
static PyObject *
Records_decrypt_into(Records *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer src, dst;
    Py_ssize_t consumed = 0, produced = 0;
    PyObject *exc = NULL;
    int more = 0;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decrypt_into(ciphertext, buffer)");
        return NULL;
    }
    if (self->ssl == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Records: not initialised");
        return NULL;
    }
    if (self->deferred != NULL) {
        exc = self->deferred;
        self->deferred = NULL;
        return raise_exception(exc);
    }
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &dst, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    /* SSL_get_error reads the error queue first: a stale entry would make "want read" an error. */
    ERR_clear_error_();
    for (;;) {
        Py_ssize_t room = dst.len - produced;
        int n;

        if (room == 0) {
            more = produced > 0;  /* a full buffer; an empty one would have the caller spin */
            break;
        }
        /* An empty BIO and ciphertext to hand: SSL_read would only ask for it. */
        if (consumed < src.len && BIO_ctrl_pending_(self->rbio) == 0 && !feed(self, &src, &consumed)) {
            exc = PyErr_NoMemory();
            break;
        }
        n = SSL_read_(self->ssl, (char *)dst.buf + produced, room > INT_MAX ? INT_MAX : (int)room);
        if (n > 0) {
            produced += n;
            /* Nothing left to decrypt without more ciphertext: spare the read that would say so. */
            if (consumed == src.len && BIO_ctrl_pending_(self->rbio) == 0 && SSL_pending_(self->ssl) == 0)
                break;
            continue;
        }
        if (SSL_get_error_(self->ssl, n) == SSL_ERROR_WANT_READ) {
            if (consumed == src.len)
                break;
            if (!feed(self, &src, &consumed)) {
                exc = PyErr_NoMemory();
                break;
            }
            continue;
        }
        exc = ssl_exception(self->ssl, n);
        if (exc == NULL)
            break;  /* the factory's own error stands */
        if (produced) {
            self->deferred = exc;  /* the plaintext before it is delivered first */
            exc = NULL;
            more = 1;
        }
        break;
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (exc != NULL || PyErr_Occurred())
        return raise_exception(exc);
    return Py_BuildValue("nnO", consumed, produced, more ? Py_True : Py_False);
}

/* Where encrypt() is in a message, so that it can stop to grow its output and go on. */
typedef struct {
    Py_buffer *views;
    Py_ssize_t nviews, index, offset;  /* the next byte to encrypt: views[index], at offset */
    char *stage;                       /* small pieces gathered into one record */
    Py_ssize_t staged;
    char *out;
    Py_ssize_t pos, capacity;
    int failed;                        /* SSL_write's result when it failed, else 1 */
} Encryption;

/* Move what the outgoing BIO holds to the output; 0 when it does not fit (grow, then call again). */
static int
drain(Records *self, Encryption *e)
{
    size_t pending = BIO_ctrl_pending_(self->wbio);

    if (pending == 0)
        return 1;
    if ((Py_ssize_t)pending > e->capacity - e->pos)
        return 0;
    e->pos += BIO_read_(self->wbio, e->out + e->pos, (int)pending);
    return 1;
}

static int
write_record(Records *self, Encryption *e, const char *data, int len)
{
    int n = SSL_write_(self->ssl, data, len);

    if (n <= 0) {
        e->failed = n;
        return 0;
    }
    return drain(self, e);
}

/* Encrypt from where `e` stands to the end, or until the output must grow (returns 0), or until
 * SSL_write fails (returns 0 with e->failed set). No Python API: may run without the GIL. Records
 * are full but for the message's last: a frame header is gathered with its payload's start. */
static int
encrypt_from(Records *self, Encryption *e)
{
    if (!drain(self, e))
        return 0;
    for (; e->index < e->nviews; e->index++, e->offset = 0) {
        const char *data = e->views[e->index].buf;
        Py_ssize_t len = e->views[e->index].len;

        while (e->offset < len) {
            Py_ssize_t left = len - e->offset;

            if (e->staged || left < MAX_RECORD_PLAINTEXT) {
                Py_ssize_t take = MAX_RECORD_PLAINTEXT - e->staged;

                if (take > left)
                    take = left;
                memcpy(e->stage + e->staged, data + e->offset, take);
                e->staged += take;
                e->offset += take;
                if (e->staged < MAX_RECORD_PLAINTEXT)
                    break;  /* the next chunk may fill it */
                e->staged = 0;  /* cleared first: a retry after growing must not write it twice */
                if (!write_record(self, e, e->stage, MAX_RECORD_PLAINTEXT))
                    return 0;
                continue;
            }
            /* A whole record straight from the chunk. */
            e->offset += MAX_RECORD_PLAINTEXT;
            if (!write_record(self, e, data + e->offset - MAX_RECORD_PLAINTEXT, MAX_RECORD_PLAINTEXT))
                return 0;
        }
    }
    if (e->staged) {
        Py_ssize_t staged = e->staged;

        e->staged = 0;
        if (!write_record(self, e, e->stage, (int)staged))
            return 0;
    }
    return 1;
}

/* Close the piece being written (shrunk to what it holds) onto the list; 0 on failure. */
static int
close_piece(PyObject *pieces, PyObject **piece, Encryption *e)
{
    int appended;

    if (e->pos != e->capacity && _PyBytes_Resize(piece, e->pos) < 0)
        return 0;
    appended = PyList_Append(pieces, *piece);
    Py_CLEAR(*piece);
    return appended == 0;
}

static PyObject *
Records_encrypt(Records *self, PyObject *const *args, Py_ssize_t nargs)
{
    Encryption e = {0};
    Py_buffer small_views[4];
    char stage[MAX_RECORD_PLAINTEXT];
    PyObject *pieces = NULL, *piece = NULL;
    Py_ssize_t total = 0, i;
    int done;

    if (self->ssl == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Records: not initialised");
        return NULL;
    }
    e.views = nargs <= 4 ? small_views : PyMem_New(Py_buffer, nargs);
    if (e.views == NULL)
        return PyErr_NoMemory();
    for (i = 0; i < nargs; i++) {
        if (PyObject_GetBuffer(args[i], &e.views[i], PyBUF_SIMPLE) < 0)
            goto fail;
        e.nviews++;
        total += e.views[i].len;
    }
    pieces = PyList_New(0);
    if (pieces == NULL)
        goto fail;
    e.stage = stage;
    e.failed = 1;
    /* One piece for a small message, at its likely size (grown if a record turns out larger). */
    e.capacity = (Py_ssize_t)BIO_ctrl_pending_(self->wbio) + total
                 + (total / MAX_RECORD_PLAINTEXT + 1) * LIKELY_RECORD_EXPANSION;
    if (e.capacity > PIECE)
        e.capacity = PIECE;
    ERR_clear_error_();
    for (;;) {
        if (piece == NULL && (piece = PyBytes_FromStringAndSize(NULL, e.capacity)) == NULL)
            goto fail;
        e.out = PyBytes_AS_STRING(piece);
        if (total >= RELEASE_GIL_FROM) {
            Py_BEGIN_ALLOW_THREADS
            done = encrypt_from(self, &e);
            Py_END_ALLOW_THREADS
        }
        else {
            done = encrypt_from(self, &e);
        }
        if (done)
            break;
        if (e.failed != 1) {
            raise_ssl_error(self->ssl, e.failed);
            goto fail;
        }
        /* The piece is full: the next record goes into a new one, or this one grows if it is empty. */
        if (e.pos == 0) {
            e.capacity += (Py_ssize_t)BIO_ctrl_pending_(self->wbio);
            if (_PyBytes_Resize(&piece, e.capacity) < 0)
                goto fail;
            continue;
        }
        if (!close_piece(pieces, &piece, &e))
            goto fail;
        e.pos = 0;
        e.capacity = PIECE;
    }
    if (e.pos > 0) {
        if (!close_piece(pieces, &piece, &e))
            goto fail;
    }
    Py_CLEAR(piece);
    goto done;
fail:
    Py_CLEAR(piece);
    Py_CLEAR(pieces);
done:
    for (i = 0; i < e.nviews; i++)
        PyBuffer_Release(&e.views[i]);
    if (e.views != small_views)
        PyMem_Free(e.views);
    return pieces;
}

static PyMethodDef Records_methods[] = {
    {"decrypt_into", (PyCFunction)(void (*)(void))Records_decrypt_into, METH_FASTCALL,
     "decrypt_into(ciphertext, buffer) -> (consumed, produced, more): plaintext into buffer until it is "
     "full or OpenSSL needs more than is left, the ciphertext moved to the incoming BIO a record's worth "
     "at a time as it is needed; more: call again (the buffer is full, or an error waits). Raises the ssl "
     "module's exceptions; one met after some plaintext is raised by the next call instead."},
    {"encrypt", (PyCFunction)(void (*)(void))Records_encrypt, METH_FASTCALL,
     "encrypt(*chunks) -> list[bytes]: the chunks' concatenation as records (after anything already "
     "pending), in pieces of at most four records' size; empty when there is nothing to send."},
    {NULL},
};

static PyTypeObject Records_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asgiws.protocols._tlsrecords.Records",
    .tp_basicsize = sizeof(Records),
    .tp_dealloc = (destructor)Records_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Records(sslobj, incoming, outgoing): an ssl.SSLObject's records in and out, without ssl.py.",
    .tp_methods = Records_methods,
    .tp_init = (initproc)Records_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------------------------------ */

#define LOOKUP(handle, name)                                     \
    do {                                                         \
        *(void **)(&name##_) = dlsym(handle, #name);             \
        if (name##_ == NULL) {                                   \
            PyErr_Format(PyExc_ImportError, "%s not found beside _ssl", #name); \
            return NULL;                                         \
        }                                                        \
    } while (0)

static PyObject *
bind(PyObject *module, PyObject *args)
{
    const char *ssl_module_path;
    PyObject *probe, *context, *incoming, *outgoing, *factory;
    SSLSocketPrefix *sock;
    void *handle;

    if (!PyArg_ParseTuple(args, "sOOOOO:bind", &ssl_module_path, &probe, &context, &incoming, &outgoing,
                          &factory))
        return NULL;
    handle = dlopen(ssl_module_path, RTLD_NOW | RTLD_NOLOAD | RTLD_LOCAL);
    if (handle == NULL) {
        PyErr_Format(PyExc_ImportError, "_ssl is not a loaded shared object: %s", dlerror());
        return NULL;
    }
    LOOKUP(handle, SSL_read);
    LOOKUP(handle, SSL_write);
    LOOKUP(handle, SSL_get_error);
    LOOKUP(handle, SSL_pending);
    LOOKUP(handle, SSL_get_rbio);
    LOOKUP(handle, SSL_get_wbio);
    LOOKUP(handle, BIO_read);
    LOOKUP(handle, BIO_write);
    LOOKUP(handle, BIO_ctrl_pending);
    LOOKUP(handle, ERR_peek_last_error);
    LOOKUP(handle, ERR_reason_error_string);
    LOOKUP(handle, ERR_clear_error);
    if (strcmp(Py_TYPE(probe)->tp_name, "_ssl._SSLSocket") != 0
        || strcmp(Py_TYPE(incoming)->tp_name, "_ssl.MemoryBIO") != 0
        || Py_TYPE(outgoing) != Py_TYPE(incoming)) {
        PyErr_SetString(PyExc_ImportError, "the probe is not an _ssl._SSLSocket over two _ssl.MemoryBIOs");
        return NULL;
    }
    sock = (SSLSocketPrefix *)probe;
    if (sock->Socket != NULL || sock->ctx != context || sock->ssl == NULL
        || SSL_get_rbio_(sock->ssl) != ((MemoryBIOPrefix *)incoming)->bio
        || SSL_get_wbio_(sock->ssl) != ((MemoryBIOPrefix *)outgoing)->bio) {
        PyErr_SetString(PyExc_ImportError, "this Python's _ssl._SSLSocket does not have the known layout");
        return NULL;
    }
    Py_INCREF(Py_TYPE(probe));
    Py_XSETREF(sslsocket_type, Py_TYPE(probe));
    Py_INCREF(Py_TYPE(incoming));
    Py_XSETREF(memorybio_type, Py_TYPE(incoming));
    Py_INCREF(factory);
    Py_XSETREF(error_factory, factory);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS,
     "bind(ssl_module_path, probe, context, incoming, outgoing, error_factory): check the layout, find "
     "OpenSSL; raises ImportError when this Python's ssl module cannot be used this way."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "asgiws.protocols._tlsrecords", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__tlsrecords(void)
{
    PyObject *m;

    if (PyType_Ready(&Records_Type) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&Records_Type);
    if (PyModule_AddObject(m, "Records", (PyObject *)&Records_Type) < 0) {
        Py_DECREF(&Records_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
