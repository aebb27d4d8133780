/* LocatorStore.append_histories's parameters, packed in one pass (CPython API only).
 *
 * pack(appends, separator) -> (refs, digests, lines, digest_starts, counts, line_starts,
 *                              line_lengths, firsts, lasts, states, districts)
 *
 * ``appends``: a list of (member_ref, LaterMonths) with distinct member refs, LaterMonths being
 * (digests: bytes, lines: bytes, counted: int, first_month: str, last_month: str,
 * district: (state, district) | None). The result is in member-ref order (code points, which is
 * the UTF-8 bytes' order): the texts joined by ``separator`` (one ASCII character: refs, first
 * and last months), the byte strings concatenated (digests, lines) with the 1-based starts
 * and the lengths of each as comma-separated decimals, and the counts, states and districts
 * likewise (0 for no district). store._append_parameters_in_python is the same in Python,
 * and the tests' reference. A text holding the separator raises ValueError, as store._pack
 * does. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} Buffer;

static int reserve(Buffer *b, Py_ssize_t more) {
    if (b->size + more <= b->capacity)
        return 1;
    Py_ssize_t capacity = b->capacity ? b->capacity : 4096;
    while (capacity < b->size + more)
        capacity *= 2;
    char *data = PyMem_Realloc(b->data, (size_t)capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    b->data = data;
    b->capacity = capacity;
    return 1;
}

static int put(Buffer *b, const char *bytes, Py_ssize_t size) {
    if (!reserve(b, size))
        return 0;
    memcpy(b->data + b->size, bytes, (size_t)size);
    b->size += size;
    return 1;
}

/* A comma before every number but the first. */
static int put_number(Buffer *b, long long value) {
    char text[24];
    char *at = text + sizeof text;
    unsigned long long magnitude =
        value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        *--at = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (value < 0)
        *--at = '-';
    if (b->size > 0 && !put(b, ",", 1))
        return 0;
    return put(b, at, (Py_ssize_t)(text + sizeof text - at));
}

/* A text, after the separator unless it is the first; a text holding the separator is
 * refused (store._pack refuses such keys: the statement would split them). */
static int put_text(Buffer *b, const char *text, Py_ssize_t size, char separator, int first) {
    if (memchr(text, separator, (size_t)size) != NULL) {
        PyErr_SetString(PyExc_ValueError, "a key holds a control character");
        return 0;
    }
    if (!first && !put(b, &separator, 1))
        return 0;
    return put(b, text, size);
}

/* A str's UTF-8 (NULL with an exception set when it is not a str). */
static const char *utf8(PyObject *value, Py_ssize_t *size) {
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "pack: a member ref or a month is not a str");
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(value, size);
}

typedef struct {
    uint64_t prefix; /* the ref's first 8 bytes, big-endian, zero-padded: compared first */
    const char *ref;
    Py_ssize_t size;
    PyObject *later; /* borrowed from the appends list */
} Item;

static uint64_t prefix_of(const char *ref, Py_ssize_t size) {
    uint64_t prefix = 0;
    for (int i = 0; i < 8; i++)
        prefix = prefix << 8 | (i < size ? (unsigned char)ref[i] : 0);
    return prefix;
}

static int by_ref(const void *a, const void *b) {
    const Item *x = a, *y = b;
    if (x->prefix != y->prefix)
        return x->prefix < y->prefix ? -1 : 1;
    Py_ssize_t shorter = x->size < y->size ? x->size : y->size;
    int order = memcmp(x->ref, y->ref, (size_t)shorter);
    return order != 0 ? order : (x->size > y->size) - (x->size < y->size);
}

static int small(PyObject *value, long long *out) {
    if (!PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "pack: a count or a district is not an int");
        return 0;
    }
    *out = PyLong_AsLongLong(value);
    return !(*out == -1 && PyErr_Occurred());
}

enum { REFS, DIGESTS, LINES, DIGEST_STARTS, COUNTS, LINE_STARTS, LINE_LENGTHS, FIRSTS, LASTS,
       STATES, DISTRICTS, PARTS };

static PyObject *pack(PyObject *module, PyObject *args) {
    PyObject *appends;
    int code;
    if (!PyArg_ParseTuple(args, "O!C:pack", &PyList_Type, &appends, &code))
        return NULL;
    if (code < 1 || code > 0x7f) {
        PyErr_SetString(PyExc_ValueError, "pack: the separator is one ASCII character");
        return NULL;
    }
    char separator = (char)code;
    Py_ssize_t count = PyList_GET_SIZE(appends);
    Item *items = PyMem_Malloc((size_t)(count ? count : 1) * sizeof *items);
    if (items == NULL)
        return PyErr_NoMemory();
    Buffer parts[PARTS] = {{0}};
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *append = PyList_GET_ITEM(appends, i);
        if (!PyTuple_Check(append) || PyTuple_GET_SIZE(append) != 2) {
            PyErr_SetString(PyExc_TypeError, "pack: an append is not (member_ref, LaterMonths)");
            goto done;
        }
        PyObject *ref = PyTuple_GET_ITEM(append, 0), *later = PyTuple_GET_ITEM(append, 1);
        if (!PyTuple_Check(later) || PyTuple_GET_SIZE(later) != 6) {
            PyErr_SetString(PyExc_TypeError, "pack: an append is not (member_ref, LaterMonths)");
            goto done;
        }
        items[i].ref = utf8(ref, &items[i].size);
        if (items[i].ref == NULL)
            goto done;
        items[i].prefix = prefix_of(items[i].ref, items[i].size);
        items[i].later = later;
    }
    qsort(items, (size_t)count, sizeof *items, by_ref);
    long long digest_start = 1, line_start = 1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *later = items[i].later;
        PyObject *digests = PyTuple_GET_ITEM(later, 0), *lines = PyTuple_GET_ITEM(later, 1);
        PyObject *district = PyTuple_GET_ITEM(later, 5);
        long long counted, state = 0, district_code = 0;
        if (!PyBytes_Check(digests) || !PyBytes_Check(lines)) {
            PyErr_SetString(PyExc_TypeError, "pack: digests and lines are bytes");
            goto done;
        }
        if (!small(PyTuple_GET_ITEM(later, 2), &counted))
            goto done;
        if (district != Py_None) {
            if (!PyTuple_Check(district) || PyTuple_GET_SIZE(district) != 2) {
                PyErr_SetString(PyExc_TypeError, "pack: a district is not (state, district)");
                goto done;
            }
            if (!small(PyTuple_GET_ITEM(district, 0), &state) ||
                !small(PyTuple_GET_ITEM(district, 1), &district_code))
                goto done;
        }
        Py_ssize_t digests_size = PyBytes_GET_SIZE(digests), lines_size = PyBytes_GET_SIZE(lines);
        Py_ssize_t first_size, last_size;
        const char *first = utf8(PyTuple_GET_ITEM(later, 3), &first_size);
        const char *last = first ? utf8(PyTuple_GET_ITEM(later, 4), &last_size) : NULL;
        if (last == NULL ||
            !put_text(&parts[REFS], items[i].ref, items[i].size, separator, i == 0) ||
            !put(&parts[DIGESTS], PyBytes_AS_STRING(digests), digests_size) ||
            !put(&parts[LINES], PyBytes_AS_STRING(lines), lines_size) ||
            !put_number(&parts[DIGEST_STARTS], digest_start) ||
            !put_number(&parts[COUNTS], counted) ||
            !put_number(&parts[LINE_STARTS], line_start) ||
            !put_number(&parts[LINE_LENGTHS], lines_size) ||
            !put_text(&parts[FIRSTS], first, first_size, separator, i == 0) ||
            !put_text(&parts[LASTS], last, last_size, separator, i == 0) ||
            !put_number(&parts[STATES], state) || !put_number(&parts[DISTRICTS], district_code))
            goto done;
        digest_start += digests_size;
        line_start += lines_size;
    }
    result = PyTuple_New(PARTS);
    if (result == NULL)
        goto done;
    for (int p = 0; p < PARTS; p++) {
        PyObject *part = p == DIGESTS || p == LINES
                             ? PyBytes_FromStringAndSize(parts[p].data, parts[p].size)
                             : PyUnicode_DecodeUTF8(parts[p].data, parts[p].size, NULL);
        if (part == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyTuple_SET_ITEM(result, p, part);
    }
done:
    for (int p = 0; p < PARTS; p++)
        PyMem_Free(parts[p].data);
    PyMem_Free(items);
    return result;
}

static PyMethodDef methods[] = {
    {"pack", pack, METH_VARARGS,
     "pack(appends, separator) -> (refs, digests, lines, digest_starts, counts, line_starts,"
     " line_lengths, firsts, lasts, states, districts), in member-ref order"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "eshram_locator.postgres._append_parameters",
    "LocatorStore.append_histories's parameters, packed in one pass.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__append_parameters(void) { return PyModule_Create(&module_def); }
