/* Optional C helper for asgiws.websocket.mask: same signatures as the py_* twins. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

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

static PyMethodDef methods[] = {
    {"apply_mask", apply_mask, METH_VARARGS, "XOR data with a 4-byte mask repeated; returns bytes."},
    {"apply_mask_chunks", apply_mask_chunks, METH_VARARGS,
     "XOR the concatenation of a sequence of bytes-like chunks with a 4-byte mask repeated; returns bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "asgiws.websocket._speedups", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
