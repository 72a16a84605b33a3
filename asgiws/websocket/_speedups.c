/* Optional C helper for asgiws.websocket.mask and .fastpath: same signatures as the py_* twins
 * (MessageQueue's twin is collections.deque). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <limits.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
/* Large payloads are unmasked 128 bytes a turn with AVX2 where the CPU has it (checked once, at
 * import): the compiler's vectorised 8-byte loop below took ~9% of the server's time in a 1 MiB
 * echo, about 3 bytes a cycle. Returns how many bytes it did, a multiple of 32. */
#define XOR_MASK_AVX2 1
static int have_avx2 = 0;

__attribute__((target("avx2"))) static Py_ssize_t
xor_mask_avx2(unsigned char *out, const unsigned char *in, Py_ssize_t n, uint64_t m64)
{
    const __m256i m = _mm256_set1_epi64x((long long)m64);
    Py_ssize_t i = 0;

    for (; i + 128 <= n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(in + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(in + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(in + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(in + i + 96));
        _mm256_storeu_si256((__m256i *)(out + i), _mm256_xor_si256(a, m));
        _mm256_storeu_si256((__m256i *)(out + i + 32), _mm256_xor_si256(b, m));
        _mm256_storeu_si256((__m256i *)(out + i + 64), _mm256_xor_si256(c, m));
        _mm256_storeu_si256((__m256i *)(out + i + 96), _mm256_xor_si256(d, m));
    }
    for (; i + 32 <= n; i += 32)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(in + i)), m));
    return i;
}
#endif

/* XOR n bytes of `in` into `out` with the 4-byte mask `m` rotated left by
 * `phase` (the payload offset modulo 4), 8 bytes at a time. */
static void
xor_mask(unsigned char *out, const unsigned char *in, Py_ssize_t n, const unsigned char *m, Py_ssize_t phase)
{
    unsigned char rot[8];
    uint64_t m64, chunk;
    Py_ssize_t i = 0;

    for (int k = 0; k < 8; k++)
        rot[k] = m[(phase + k) & 3];
    memcpy(&m64, rot, 8);
#ifdef XOR_MASK_AVX2
    if (have_avx2 && n >= 256)
        i = xor_mask_avx2(out, in, n, m64);  /* a multiple of 8: the mask's phase is unchanged */
#endif
    for (; i + 8 <= n; i += 8) {
        memcpy(&chunk, in + i, 8);
        chunk ^= m64;
        memcpy(out + i, &chunk, 8);
    }
    for (; i < n; i++)
        out[i] = in[i] ^ rot[i & 7];
}

static PyObject *
apply_mask(PyObject *self, PyObject *args)
{
    Py_buffer data, mask;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*y*:apply_mask", &data, &mask))
        return NULL;
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must contain 4 bytes");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result == NULL)
        goto done;
    xor_mask((unsigned char *)PyBytes_AS_STRING(result), (const unsigned char *)data.buf, data.len,
             (const unsigned char *)mask.buf, 0);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&mask);
    return result;
}

/* The payload of a frame that arrived in several reads: one allocation and
 * one pass, instead of unmasking each part and joining the results. */
static PyObject *
apply_mask_chunks(PyObject *self, PyObject *args)
{
    PyObject *chunks, *seq = NULL, *result = NULL;
    Py_buffer mask, part;
    Py_ssize_t count, total = 0, offset = 0;

    if (!PyArg_ParseTuple(args, "Oy*:apply_mask_chunks", &chunks, &mask))
        return NULL;
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must contain 4 bytes");
        goto done;
    }
    seq = PySequence_Fast(chunks, "chunks must be a sequence of bytes-like objects");
    if (seq == NULL)
        goto done;
    count = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &part, PyBUF_SIMPLE) < 0)
            goto done;
        total += part.len;
        PyBuffer_Release(&part);
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &part, PyBUF_SIMPLE) < 0) {
            Py_CLEAR(result);
            goto done;
        }
        if (part.len > total - offset) {  /* a chunk grew between the two passes */
            PyBuffer_Release(&part);
            PyErr_SetString(PyExc_RuntimeError, "chunks changed size while being unmasked");
            Py_CLEAR(result);
            goto done;
        }
        xor_mask((unsigned char *)PyBytes_AS_STRING(result) + offset, (const unsigned char *)part.buf, part.len,
                 (const unsigned char *)mask.buf, offset & 3);
        offset += part.len;
        PyBuffer_Release(&part);
    }
    if (offset != total) {
        PyErr_SetString(PyExc_RuntimeError, "chunks changed size while being unmasked");
        Py_CLEAR(result);
    }
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&mask);
    return result;
}


/* Tally: what crossed one connection's codec, in plain C integers (the
 * pure-Python twin is fastpath.PyTally): parse_messages and small_text_frame
 * count the common frames here without a Python statement each; the codec's
 * other paths add from Python. Read by the metrics scrape and the close's
 * log line. */
typedef struct {
    PyObject_HEAD
    long long messages_received;
    long long messages_sent;
    long long bytes_received;  /* frames read, headers included */
    long long bytes_sent;
} Tally;

static PyMemberDef Tally_members[] = {
    {"messages_received", T_LONGLONG, offsetof(Tally, messages_received), 0, "data messages read"},
    {"messages_sent", T_LONGLONG, offsetof(Tally, messages_sent), 0, "data messages written"},
    {"bytes_received", T_LONGLONG, offsetof(Tally, bytes_received), 0, "bytes of the frames read"},
    {"bytes_sent", T_LONGLONG, offsetof(Tally, bytes_sent), 0, "bytes of the frames written"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject Tally_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asgiws.websocket._speedups.Tally",
    .tp_basicsize = sizeof(Tally),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Tally(): messages and bytes each way through one connection's codec, all 0 at first.",
    .tp_members = Tally_members,
    .tp_new = PyType_GenericNew,
};

/* MessageQueue: one WebSocket's messages waiting for the app, first in first out. The pure-Python
 * twin is collections.deque, whose interface it has for what the session uses (append, popleft,
 * len, truth, indexing, iteration, clear). An empty deque is 760 bytes (its first block holds 64 items,
 * allocated up front), 7% of an idle connection's memory; this is 48 bytes and an array grown as
 * messages come, freed when the queue empties after a burst. A list would be as small, but its
 * pop(0) moves every item behind: a 256 KiB read of empty frames queues 43,000 messages, and
 * taking them one at a time would be quadratic. Here the taken slots are reclaimed by moving the
 * queue to the front only once at least as many are free as are used (amortized O(1)). */
typedef struct {
    PyObject_HEAD
    PyObject **items;     /* capacity slots; the queue is items[head : head + size] */
    Py_ssize_t head;
    Py_ssize_t size;
    Py_ssize_t capacity;
} MessageQueue;

static PyTypeObject MessageQueue_Type;

#define QUEUE_FIRST_CAPACITY 4
#define QUEUE_KEPT_CAPACITY 16  /* an emptied queue keeps an array up to this many slots */

static int
queue_append(MessageQueue *q, PyObject *item)
{
    if (q->head + q->size == q->capacity) {
        if (q->head > 0 && q->head >= q->size) {
            memmove(q->items, q->items + q->head, q->size * sizeof(PyObject *));
            q->head = 0;
        }
        else {
            Py_ssize_t capacity = q->capacity ? q->capacity * 2 : QUEUE_FIRST_CAPACITY;
            PyObject **items;

            if (capacity > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(PyObject *)) {
                PyErr_NoMemory();
                return -1;
            }
            items = PyMem_Realloc(q->items, capacity * sizeof(PyObject *));
            if (items == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            q->items = items;
            q->capacity = capacity;
        }
    }
    Py_INCREF(item);
    q->items[q->head + q->size] = item;
    q->size++;
    return 0;
}

static int
queue_clear(MessageQueue *q)
{
    /* Emptied before the references go: a message's __del__ may look at the queue. */
    PyObject **items = q->items;
    Py_ssize_t head = q->head, size = q->size;

    q->items = NULL;
    q->head = q->size = q->capacity = 0;
    for (Py_ssize_t i = head; i < head + size; i++)
        Py_DECREF(items[i]);
    PyMem_Free(items);
    return 0;
}

static PyObject *
MessageQueue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *iterable = NULL, *iterator, *item;
    static char *kwlist[] = {"iterable", NULL};
    MessageQueue *q;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:MessageQueue", kwlist, &iterable))
        return NULL;
    q = (MessageQueue *)type->tp_alloc(type, 0);
    if (q == NULL)
        return NULL;
    if (iterable == NULL)
        return (PyObject *)q;
    iterator = PyObject_GetIter(iterable);
    if (iterator == NULL) {
        Py_DECREF(q);
        return NULL;
    }
    while ((item = PyIter_Next(iterator)) != NULL) {
        int failed = queue_append(q, item);

        Py_DECREF(item);
        if (failed) {
            Py_DECREF(iterator);
            Py_DECREF(q);
            return NULL;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred()) {
        Py_DECREF(q);
        return NULL;
    }
    return (PyObject *)q;
}

static int
MessageQueue_traverse(MessageQueue *q, visitproc visit, void *arg)
{
    for (Py_ssize_t i = q->head; i < q->head + q->size; i++)
        Py_VISIT(q->items[i]);
    return 0;
}

static void
MessageQueue_dealloc(MessageQueue *q)
{
    PyObject_GC_UnTrack(q);
    queue_clear(q);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

static Py_ssize_t
MessageQueue_len(MessageQueue *q)
{
    return q->size;
}

static PyObject *
MessageQueue_append(MessageQueue *q, PyObject *item)
{
    if (queue_append(q, item) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
MessageQueue_popleft(MessageQueue *q, PyObject *unused)
{
    PyObject *item;

    if (q->size == 0) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty MessageQueue");
        return NULL;
    }
    item = q->items[q->head];  /* the queue's reference, now the caller's */
    q->items[q->head] = NULL;
    q->head++;
    q->size--;
    if (q->size == 0) {
        q->head = 0;
        if (q->capacity > QUEUE_KEPT_CAPACITY)
            queue_clear(q);  /* empty already: after a burst, this gives its array back */
    }
    return item;
}

static PyObject *
MessageQueue_clear_method(MessageQueue *q, PyObject *unused)
{
    queue_clear(q);
    Py_RETURN_NONE;
}

/* The items as a new list (iteration and repr go through it: neither is on a hot path). */
static PyObject *
queue_as_list(MessageQueue *q)
{
    PyObject *list = PyList_New(q->size);

    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < q->size; i++)
        PyList_SET_ITEM(list, i, Py_NewRef(q->items[q->head + i]));
    return list;
}

static PyObject *
MessageQueue_iter(MessageQueue *q)
{
    PyObject *list = queue_as_list(q), *iterator;

    if (list == NULL)
        return NULL;
    iterator = PyObject_GetIter(list);
    Py_DECREF(list);
    return iterator;
}

static PyObject *
MessageQueue_repr(MessageQueue *q)
{
    PyObject *list, *repr;
    int status = Py_ReprEnter((PyObject *)q);

    if (status != 0)
        return status > 0 ? PyUnicode_FromString("MessageQueue([...])") : NULL;
    list = queue_as_list(q);
    repr = list == NULL ? NULL : PyUnicode_FromFormat("MessageQueue(%R)", list);
    Py_XDECREF(list);
    Py_ReprLeave((PyObject *)q);
    return repr;
}

static PyObject *
MessageQueue_item(MessageQueue *q, Py_ssize_t index)
{
    /* sq_item: a negative index has had len() added to it already. */
    if (index < 0 || index >= q->size) {
        PyErr_SetString(PyExc_IndexError, "MessageQueue index out of range");
        return NULL;
    }
    return Py_NewRef(q->items[q->head + index]);
}

static PySequenceMethods MessageQueue_as_sequence = {
    .sq_length = (lenfunc)MessageQueue_len,
    .sq_item = (ssizeargfunc)MessageQueue_item,
};

static PyMethodDef MessageQueue_methods[] = {
    {"append", (PyCFunction)MessageQueue_append, METH_O, "Add an item at the end."},
    {"popleft", (PyCFunction)MessageQueue_popleft, METH_NOARGS,
     "Remove and return the first item; IndexError if there is none."},
    {"clear", (PyCFunction)MessageQueue_clear_method, METH_NOARGS, "Remove every item."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MessageQueue_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asgiws.websocket._speedups.MessageQueue",
    .tp_basicsize = sizeof(MessageQueue),
    .tp_dealloc = (destructor)MessageQueue_dealloc,
    .tp_repr = (reprfunc)MessageQueue_repr,
    .tp_as_sequence = &MessageQueue_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "MessageQueue([iterable]): first in first out (append, popleft, len, q[i]), as collections.deque.",
    .tp_traverse = (traverseproc)MessageQueue_traverse,
    .tp_clear = (inquiry)queue_clear,
    .tp_iter = (getiterfunc)MessageQueue_iter,
    .tp_methods = MessageQueue_methods,
    .tp_new = MessageQueue_new,
};


/* `tally` as the Tally to count in, NULL for None (count nothing), or -1 with TypeError. */
static int
tally_arg(PyObject *tally, Tally **out)
{
    if (tally == Py_None) {
        *out = NULL;
        return 0;
    }
    if (!PyObject_TypeCheck(tally, &Tally_Type)) {
        PyErr_SetString(PyExc_TypeError, "tally must be a Tally or None");
        return -1;
    }
    *out = (Tally *)tally;
    return 0;
}


/* Whole unfragmented data frames at data[pos:], the common case, in one call:
 * header (FIN set, no RSV bit, TEXT or BINARY, masked, length at most
 * max_size, the whole payload in `data`), unmasking, and for text the strict
 * UTF-8 decode; each becomes text_type(str) or binary_type(bytes), appended
 * to `events` (a list or a MessageQueue directly, else through its append method). Stops
 * at the first frame that is anything else (a control
 * frame, a fragment, a cut frame, an oversized one, invalid UTF-8) and
 * returns its offset: the caller parses that frame in full, and reports its
 * error if it has one. With a Tally (the optional 7th argument) the frames
 * taken are counted in it. */
static PyObject *
parse_messages(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *data, *events, *text_type, *binary_type, *payload, *event, *append = NULL, *result = NULL;
    const unsigned char *buf;
    Py_ssize_t pos, end, start;
    unsigned long long length, max_size;
    unsigned char stack[512];
    unsigned char *tmp;
    Tally *tally = NULL;
    Py_ssize_t first, taken = 0;

    if (nargs != 6 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "parse_messages(data, pos, events, max_size, text_type, binary_type[, tally])");
        return NULL;
    }
    if (nargs == 7 && tally_arg(args[6], &tally) < 0)
        return NULL;
    data = args[0];
    events = args[2];
    text_type = args[4];
    binary_type = args[5];
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    buf = (const unsigned char *)PyBytes_AS_STRING(data);
    end = PyBytes_GET_SIZE(data);
    if (pos < 0 || pos > end) {
        PyErr_SetString(PyExc_ValueError, "pos outside data");
        return NULL;
    }
    first = pos;
    {
        int overflow;
        long long limit = PyLong_AsLongLongAndOverflow(args[3], &overflow);

        if (limit == -1 && PyErr_Occurred())
            return NULL;
        if (overflow > 0)
            max_size = ULLONG_MAX;  /* no frame length is over it */
        else if (overflow < 0 || limit < 0)
            return PyLong_FromSsize_t(pos);  /* every frame is: none taken */
        else
            max_size = (unsigned long long)limit;
    }
    if (!PyList_CheckExact(events) && !Py_IS_TYPE(events, &MessageQueue_Type)) {
        append = PyObject_GetAttrString(events, "append");
        if (append == NULL)
            return NULL;
    }
    while (end - pos >= 6) {
        unsigned char b0 = buf[pos], b1 = buf[pos + 1];

        if ((b0 != 0x81 && b0 != 0x82) || !(b1 & 0x80))
            break;
        length = b1 & 0x7F;
        start = pos + 6;
        if (length == 126) {
            start = pos + 8;
            if (end < start)
                break;
            length = ((unsigned long long)buf[pos + 2] << 8) | buf[pos + 3];
        }
        else if (length == 127) {
            start = pos + 14;
            if (end < start)
                break;
            length = 0;
            for (int k = 2; k < 10; k++)
                length = (length << 8) | buf[pos + k];
        }
        if (length > max_size || length > (unsigned long long)(end - start))
            break;
        if (b0 == 0x82) {
            payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
            if (payload == NULL)
                goto done;
            xor_mask((unsigned char *)PyBytes_AS_STRING(payload), buf + start, (Py_ssize_t)length, buf + start - 4, 0);
            event = PyObject_CallOneArg(binary_type, payload);
        }
        else {
            tmp = length <= sizeof(stack) ? stack : PyMem_Malloc((size_t)length);
            if (tmp == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            xor_mask(tmp, buf + start, (Py_ssize_t)length, buf + start - 4, 0);
            payload = PyUnicode_DecodeUTF8((const char *)tmp, (Py_ssize_t)length, NULL);
            if (tmp != stack)
                PyMem_Free(tmp);
            if (payload == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                    goto done;
                PyErr_Clear();  /* the caller parses this frame again and fails it (1007) */
                break;
            }
            event = PyObject_CallOneArg(text_type, payload);
        }
        Py_DECREF(payload);
        if (event == NULL)
            goto done;
        if (append == NULL) {
            int failed = PyList_CheckExact(events) ? PyList_Append(events, event)
                                                   : queue_append((MessageQueue *)events, event);

            if (failed < 0) {
                Py_DECREF(event);
                goto done;
            }
        }
        else {
            PyObject *none = PyObject_CallOneArg(append, event);

            if (none == NULL) {
                Py_DECREF(event);
                goto done;
            }
            Py_DECREF(none);
        }
        Py_DECREF(event);
        pos = start + (Py_ssize_t)length;
        taken++;
    }
    result = PyLong_FromSsize_t(pos);
done:
    if (tally != NULL) {  /* the frames appended, also when a later one failed */
        tally->messages_received += taken;
        tally->bytes_received += pos - first;
    }
    Py_XDECREF(append);
    return result;
}

/* The ASGI "websocket.receive" message of a text or binary message, built in
 * one call (the pure-Python twins are fastpath.py_receive_text and
 * py_receive_bytes): the session hands these to the codec as its message
 * types, so a read's messages reach the app's queue without a Python frame
 * each. The keys are interned once at import. */
static PyObject *key_type, *key_text, *key_bytes, *value_receive;

static PyObject *
receive_message(PyObject *key, PyObject *value)
{
    PyObject *message = _PyDict_NewPresized(2);

    if (message == NULL)
        return NULL;
    if (PyDict_SetItem(message, key_type, value_receive) < 0 || PyDict_SetItem(message, key, value) < 0) {
        Py_DECREF(message);
        return NULL;
    }
    return message;
}

static PyObject *
receive_text(PyObject *self, PyObject *text)
{
    return receive_message(key_text, text);
}

static PyObject *
receive_bytes(PyObject *self, PyObject *data)
{
    return receive_message(key_bytes, data);
}

/* The frame of a short text message: header and UTF-8 payload in one bytes
 * object (5.2: FIN set, opcode 0x1, no mask from a server, a 7-bit length),
 * or None when the payload is over 125 bytes (the caller frames it in full).
 * For ASCII (compact) strings the UTF-8 form is the string's own storage:
 * one allocation, the frame. With a Tally (the optional 2nd argument) the
 * frame made is counted in it as one message sent. */
static PyObject *
small_text_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const char *utf8;
    Py_ssize_t length;
    PyObject *frame, *text;
    char *out;
    Tally *tally = NULL;

    if (nargs != 1 && nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "small_text_frame(text[, tally])");
        return NULL;
    }
    text = args[0];
    if (nargs == 2 && tally_arg(args[1], &tally) < 0)
        return NULL;
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "small_text_frame() takes a str");
        return NULL;
    }
    if (PyUnicode_GET_LENGTH(text) > 125)
        Py_RETURN_NONE;  /* over 125 bytes whatever its characters */
    utf8 = PyUnicode_AsUTF8AndSize(text, &length);
    if (utf8 == NULL)
        return NULL;  /* lone surrogates: UnicodeEncodeError, as str.encode() */
    if (length > 125)
        Py_RETURN_NONE;
    frame = PyBytes_FromStringAndSize(NULL, length + 2);
    if (frame == NULL)
        return NULL;
    out = PyBytes_AS_STRING(frame);
    out[0] = (char)0x81;
    out[1] = (char)length;
    memcpy(out + 2, utf8, (size_t)length);
    if (tally != NULL) {
        tally->messages_sent++;
        tally->bytes_sent += length + 2;
    }
    return frame;
}

/* PayloadBuffer: a bytes object filled in place, for a large frame payload.
 *
 * The reads of a large frame go straight into the storage of the bytes
 * object that the app will receive (through the buffer protocol, as
 * socket.recv_into would), and are unmasked there: no intermediate copies.
 * The bytes object is not reachable from Python until finish(); finish()
 * publishes it only when no writable view of it is still exported, else it
 * returns a copy, so a published bytes object is never written again.
 * Either way the buffer is then spent, as the Python twin's is: a second
 * finish() raises ValueError, view() BufferError.
 * The storage is not zeroed: the codec writes every byte before finish(). */
typedef struct {
    PyObject_HEAD
    PyObject *bytes;      /* the bytes object being filled; NULL once published */
    Py_ssize_t exports;   /* writable views handed out and not yet released */
    int finished;         /* finish() was called (bytes kept only for views still exported) */
} PayloadBuffer;

static PyObject *
PayloadBuffer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    static char *kwlist[] = {"size", NULL};
    PayloadBuffer *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n:PayloadBuffer", kwlist, &size))
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must not be negative");
        return NULL;
    }
    self = (PayloadBuffer *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->bytes = PyBytes_FromStringAndSize(NULL, size);
    if (self->bytes == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->exports = 0;
    self->finished = 0;
    return (PyObject *)self;
}

static void
PayloadBuffer_dealloc(PayloadBuffer *self)
{
    Py_XDECREF(self->bytes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
PayloadBuffer_getbuffer(PayloadBuffer *self, Py_buffer *view, int flags)
{
    if (self->finished) {
        PyErr_SetString(PyExc_BufferError, "PayloadBuffer already finished");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, PyBytes_AS_STRING(self->bytes), PyBytes_GET_SIZE(self->bytes),
                          0, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void
PayloadBuffer_releasebuffer(PayloadBuffer *self, Py_buffer *view)
{
    self->exports--;
    if (self->finished && self->exports == 0)
        Py_CLEAR(self->bytes);  /* a copy was published: the last view let go of the original */
}

static PyBufferProcs PayloadBuffer_as_buffer = {
    (getbufferproc)PayloadBuffer_getbuffer,
    (releasebufferproc)PayloadBuffer_releasebuffer,
};

static PyObject *
PayloadBuffer_view(PayloadBuffer *self, PyObject *unused)
{
    return PyMemoryView_FromObject((PyObject *)self);
}

static PyObject *
PayloadBuffer_unmask(PayloadBuffer *self, PyObject *args)
{
    Py_ssize_t start, end;
    Py_buffer mask;
    unsigned char *buf;

    if (!PyArg_ParseTuple(args, "nny*:unmask", &start, &end, &mask))
        return NULL;
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must contain 4 bytes");
        PyBuffer_Release(&mask);
        return NULL;
    }
    if (self->finished || start < 0 || end < start || end > PyBytes_GET_SIZE(self->bytes)) {
        PyErr_SetString(PyExc_ValueError, "unmask range outside the buffer");
        PyBuffer_Release(&mask);
        return NULL;
    }
    buf = (unsigned char *)PyBytes_AS_STRING(self->bytes) + start;
    xor_mask(buf, buf, end - start, (const unsigned char *)mask.buf, start & 3);
    PyBuffer_Release(&mask);
    Py_RETURN_NONE;
}

static PyObject *
PayloadBuffer_finish(PayloadBuffer *self, PyObject *unused)
{
    PyObject *result;

    if (self->finished) {
        PyErr_SetString(PyExc_ValueError, "PayloadBuffer already finished");
        return NULL;
    }
    if (self->exports) {
        /* Someone may still write through a view: publish a copy, and keep the
         * original (the views point into it) until the last view is released. */
        result = PyBytes_FromStringAndSize(PyBytes_AS_STRING(self->bytes), PyBytes_GET_SIZE(self->bytes));
        if (result != NULL)
            self->finished = 1;
        return result;
    }
    self->finished = 1;
    result = self->bytes;
    self->bytes = NULL;
    return result;
}

static PyMethodDef PayloadBuffer_methods[] = {
    {"view", (PyCFunction)PayloadBuffer_view, METH_NOARGS, "A writable memoryview of the whole payload."},
    {"unmask", (PyCFunction)PayloadBuffer_unmask, METH_VARARGS,
     "unmask(start, end, mask): XOR [start:end) in place with the mask, phase start % 4."},
    {"finish", (PyCFunction)PayloadBuffer_finish, METH_NOARGS, "The payload as bytes; the buffer is then spent."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PayloadBuffer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asgiws.websocket._speedups.PayloadBuffer",
    .tp_basicsize = sizeof(PayloadBuffer),
    .tp_dealloc = (destructor)PayloadBuffer_dealloc,
    .tp_as_buffer = &PayloadBuffer_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PayloadBuffer(size): a frame payload read and unmasked in place, then finished into bytes.",
    .tp_methods = PayloadBuffer_methods,
    .tp_new = PayloadBuffer_new,
};

static PyMethodDef methods[] = {
    {"apply_mask", apply_mask, METH_VARARGS, "XOR data with a 4-byte mask repeated; returns bytes."},
    {"apply_mask_chunks", apply_mask_chunks, METH_VARARGS,
     "XOR the concatenation of a sequence of bytes-like chunks with a 4-byte mask repeated; returns bytes."},
    {"parse_messages", (PyCFunction)(void (*)(void))parse_messages, METH_FASTCALL,
     "parse_messages(data, pos, events, max_size, text_type, binary_type[, tally]): whole unfragmented data "
     "frames from data[pos:] appended to events as messages (and counted in tally); returns the offset of "
     "the first frame not taken."},
    {"receive_text", receive_text, METH_O, "receive_text(str): {'type': 'websocket.receive', 'text': str}."},
    {"receive_bytes", receive_bytes, METH_O,
     "receive_bytes(bytes): {'type': 'websocket.receive', 'bytes': bytes}."},
    {"small_text_frame", (PyCFunction)(void (*)(void))small_text_frame, METH_FASTCALL,
     "small_text_frame(str[, tally]): the unmasked FIN text frame of a payload up to 125 bytes, else None "
     "(a frame made is counted in tally)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "asgiws.websocket._speedups", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m;

    if (PyType_Ready(&PayloadBuffer_Type) < 0 || PyType_Ready(&Tally_Type) < 0
        || PyType_Ready(&MessageQueue_Type) < 0)
        return NULL;
#ifdef XOR_MASK_AVX2
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
#endif
    key_type = PyUnicode_InternFromString("type");
    key_text = PyUnicode_InternFromString("text");
    key_bytes = PyUnicode_InternFromString("bytes");
    value_receive = PyUnicode_InternFromString("websocket.receive");
    if (key_type == NULL || key_text == NULL || key_bytes == NULL || value_receive == NULL)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PayloadBuffer_Type);
    if (PyModule_AddObject(m, "PayloadBuffer", (PyObject *)&PayloadBuffer_Type) < 0) {
        Py_DECREF(&PayloadBuffer_Type);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&Tally_Type);
    if (PyModule_AddObject(m, "Tally", (PyObject *)&Tally_Type) < 0) {
        Py_DECREF(&Tally_Type);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&MessageQueue_Type);
    if (PyModule_AddObject(m, "MessageQueue", (PyObject *)&MessageQueue_Type) < 0) {
        Py_DECREF(&MessageQueue_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
