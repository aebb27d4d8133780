/*
 * The input streams' fast reader: one RationCollection (or WorkerRegistration) from its
 * single-object encoded bytes, when they were written with the current schema, straight into
 * the domain types.
 *
 * It answers for the common case only and leaves everything else to the general path
 * (eshram_locator.intake.read_collection: fastavro, the Aadhaar guard, the checks of
 * eshram_locator.records). read() returns None, never raises for bad input, when the record:
 *   - does not start with the expected header (another schema, Confluent framing);
 *   - is truncated, has trailing bytes, or a varint, union branch or enum index out of range;
 *   - has an int past 32 bits, or a string with a byte outside printable ASCII (0x20-0x7e);
 *   - has a string with a run of 12 digits, or three groups of 4 digits separated by a space
 *     or a hyphen (an Aadhaar-like shape; the general path decides);
 *   - fails any check of the general path (empty ids, key != member_ref, month, state codes,
 *     district > 0, more than 100 items, a negative quantity), or a timestamp outside
 *     1970-2109.
 * Whatever it returns otherwise equals what the general path returns for the same bytes
 * (tests/unit/test_collection_reader.py checks both on generated and mutated records).
 * read_registration() does the same for eshram_locator.intake.read_registration: its uan (12
 * ASCII digits, equal to the key) is exempt from the digit-shape check, as from the Aadhaar
 * guard; a boolean byte other than 0 or 1, or any of the cases above, gives None.
 *
 * Frozen slotted dataclasses are filled through their slots' member descriptors, as their
 * generated __init__ does through object.__setattr__, without its per-field Python calls.
 * Equal shop locations and item lists are shared through caches keyed by their encoded bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

#define COLLECTION_FIELDS 12
#define LOCATION_FIELDS 5
#define ITEM_FIELDS 3
#define REGISTRATION_FIELDS 8
#define MAX_ITEMS 100
#define CACHE_LIMIT 200000
#define MAX_MILLIS (INT64_C(1) << 42) /* 2109-05-15 */

typedef struct {
    PyTypeObject *type;
    PyObject *setters[COLLECTION_FIELDS]; /* member descriptors, in field order */
    int fields;
} Shape;

static struct {
    int configured;
    Shape collection, location, item, registration;
    PyObject *auth_modes;    /* tuple: enum index -> AuthMode */
    PyObject *portabilities; /* tuple: enum index -> Portability */
    PyObject *epoch;         /* datetime(1970, 1, 1, tzinfo=UTC) */
    unsigned char states[256];
    PyObject *locations; /* dict: encoded bytes -> Location */
    PyObject *item_lists; /* dict: encoded bytes -> tuple of CollectionItem */
} reader;

typedef struct {
    const unsigned char *at;
    const unsigned char *end;
} Cursor;

/* --- Avro primitives: 0 on success, -1 when the general path must decide ----------------- */

static int read_long(Cursor *c, int64_t *out) {
    uint64_t value = 0;
    int shift = 0;
    while (c->at < c->end) {
        unsigned char byte = *c->at++;
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = (int64_t)(value >> 1) ^ -(int64_t)(value & 1);
            return 0;
        }
        shift += 7;
        if (shift > 56) /* more than 9 bytes: past what this reader accepts */
            return -1;
    }
    return -1;
}

static int read_int(Cursor *c, long *out) {
    int64_t value;
    if (read_long(c, &value) < 0 || value < INT32_MIN || value > INT32_MAX)
        return -1;
    *out = (long)value;
    return 0;
}

static int is_digit(unsigned char byte) { return byte >= '0' && byte <= '9'; }

static int digits_at(const unsigned char *s, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++)
        if (!is_digit(s[i]))
            return 0;
    return 1;
}

/* A run of 12 digits, or dddd?dddd?dddd with each ? a space or a hyphen. */
static int has_number_shape(const unsigned char *s, Py_ssize_t n) {
    int run = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        run = is_digit(s[i]) ? run + 1 : 0;
        if (run >= 12)
            return 1;
    }
    for (Py_ssize_t i = 0; i + 14 <= n; i++) {
        if ((s[i + 4] == ' ' || s[i + 4] == '-') && (s[i + 9] == ' ' || s[i + 9] == '-') &&
            digits_at(s + i, 4) && digits_at(s + i + 5, 4) && digits_at(s + i + 10, 4))
            return 1;
    }
    return 0;
}

/* A string of printable ASCII: its bytes and length. */
static int read_ascii(Cursor *c, const unsigned char **text, Py_ssize_t *size) {
    int64_t length;
    if (read_long(c, &length) < 0 || length < 0 || length > c->end - c->at)
        return -1;
    const unsigned char *s = c->at;
    for (int64_t i = 0; i < length; i++)
        if (s[i] < 0x20 || s[i] > 0x7E)
            return -1;
    c->at += length;
    *text = s;
    *size = (Py_ssize_t)length;
    return 0;
}

/* A string of printable ASCII without a number shape. */
static int read_text(Cursor *c, const unsigned char **text, Py_ssize_t *size) {
    if (read_ascii(c, text, size) < 0)
        return -1;
    return *size >= 12 && has_number_shape(*text, *size) ? -1 : 0;
}

static PyObject *text_object(const unsigned char *text, Py_ssize_t size) {
    PyObject *value = PyUnicode_New(size, 127);
    if (value != NULL)
        memcpy(PyUnicode_DATA(value), text, (size_t)size);
    return value;
}

static int not_blank(const unsigned char *text, Py_ssize_t size) {
    for (Py_ssize_t i = 0; i < size; i++)
        if (text[i] != ' ')
            return 1;
    return 0; /* empty, or only spaces (the only ASCII whitespace left is the space) */
}

/* --- building the frozen dataclasses ------------------------------------------------------ */

/* Steals the references in values (also on failure). */
static PyObject *build(Shape *shape, PyObject **values) {
    PyObject *made = shape->type->tp_alloc(shape->type, 0);
    int failed = made == NULL;
    for (int i = 0; i < shape->fields; i++) {
        if (!failed && values[i] != NULL) {
            PyObject *setter = shape->setters[i];
            failed = Py_TYPE(setter)->tp_descr_set(setter, made, values[i]) < 0;
        } else if (values[i] == NULL) {
            failed = 1;
        }
        Py_XDECREF(values[i]);
    }
    if (failed) {
        Py_XDECREF(made);
        return NULL;
    }
    return made;
}

static PyObject *optional_int(Cursor *c, int *defer) {
    int64_t branch;
    long value;
    if (read_long(c, &branch) < 0 || (branch != 0 && branch != 1)) {
        *defer = 1;
        return NULL;
    }
    if (branch == 0)
        Py_RETURN_NONE;
    if (read_int(c, &value) < 0) {
        *defer = 1;
        return NULL;
    }
    return PyLong_FromLong(value);
}

static void clear_if_full(PyObject *cache) {
    if (PyDict_GET_SIZE(cache) >= CACHE_LIMIT)
        PyDict_Clear(cache);
}

/* Location: a cached instance for the same encoded bytes. New reference; NULL with *defer set
   for the general path, NULL without it on a Python error. */
static PyObject *read_location(Cursor *c, int *defer) {
    const unsigned char *start = c->at;
    long state, district;
    if (read_int(c, &state) < 0 || read_int(c, &district) < 0 || state < 0 || state > 255 ||
        !reader.states[state] || district <= 0) {
        *defer = 1;
        return NULL;
    }
    PyObject *values[LOCATION_FIELDS] = {NULL};
    values[2] = optional_int(c, defer);
    if (values[2] != NULL)
        values[3] = optional_int(c, defer);
    int64_t branch = -1;
    const unsigned char *text = NULL;
    Py_ssize_t size = 0;
    if (values[3] == NULL || read_long(c, &branch) < 0 || (branch != 0 && branch != 1) ||
        (branch == 1 && read_text(c, &text, &size) < 0)) {
        if (!PyErr_Occurred())
            *defer = 1;
        Py_XDECREF(values[2]);
        Py_XDECREF(values[3]);
        return NULL;
    }
    PyObject *key = PyBytes_FromStringAndSize((const char *)start, c->at - start);
    if (key == NULL) {
        Py_DECREF(values[2]);
        Py_DECREF(values[3]);
        return NULL;
    }
    PyObject *found = PyDict_GetItemWithError(reader.locations, key);
    if (found != NULL || PyErr_Occurred()) {
        Py_XINCREF(found);
        Py_DECREF(key);
        Py_DECREF(values[2]);
        Py_DECREF(values[3]);
        return found;
    }
    values[0] = PyLong_FromLong(state);
    values[1] = PyLong_FromLong(district);
    if (branch == 1) {
        values[4] = text_object(text, size);
    } else {
        values[4] = Py_NewRef(Py_None);
    }
    PyObject *location = build(&reader.location, values);
    if (location != NULL) {
        clear_if_full(reader.locations);
        if (PyDict_SetItem(reader.locations, key, location) < 0)
            Py_CLEAR(location);
    }
    Py_DECREF(key);
    return location;
}

/* One item; NULL with *defer set, or on a Python error. */
static PyObject *read_item(Cursor *c, int *defer) {
    const unsigned char *commodity, *scheme;
    Py_ssize_t commodity_size, scheme_size;
    long quantity;
    if (read_text(c, &commodity, &commodity_size) < 0 || read_text(c, &scheme, &scheme_size) < 0 ||
        read_int(c, &quantity) < 0 || quantity < 0) {
        *defer = 1;
        return NULL;
    }
    PyObject *values[ITEM_FIELDS] = {
        text_object(commodity, commodity_size),
        text_object(scheme, scheme_size),
        PyLong_FromLong(quantity),
    };
    return build(&reader.item, values);
}

/* The items array as a tuple, cached by its encoded bytes. */
static PyObject *read_items(Cursor *c, int *defer) {
    const unsigned char *start = c->at;
    /* First pass: find the end of the array and check it, without building anything. */
    Cursor scan = *c;
    int64_t total = 0;
    for (;;) {
        int64_t count, bytes;
        if (read_long(&scan, &count) < 0) {
            *defer = 1;
            return NULL;
        }
        if (count == 0)
            break;
        if (count < 0) {
            if (read_long(&scan, &bytes) < 0 || count == INT64_MIN) {
                *defer = 1;
                return NULL;
            }
            count = -count;
        }
        total += count;
        if (total > MAX_ITEMS) {
            *defer = 1;
            return NULL;
        }
        for (int64_t i = 0; i < count; i++) {
            const unsigned char *text;
            Py_ssize_t size;
            long quantity;
            if (read_text(&scan, &text, &size) < 0 || read_text(&scan, &text, &size) < 0 ||
                read_int(&scan, &quantity) < 0 || quantity < 0) {
                *defer = 1;
                return NULL;
            }
        }
    }
    PyObject *key = PyBytes_FromStringAndSize((const char *)start, scan.at - start);
    if (key == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(reader.item_lists, key);
    if (found != NULL || PyErr_Occurred()) {
        Py_XINCREF(found);
        Py_DECREF(key);
        c->at = scan.at;
        return found;
    }
    PyObject *items = PyTuple_New((Py_ssize_t)total);
    if (items == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    Py_ssize_t filled = 0;
    for (;;) {
        int64_t count, bytes;
        read_long(c, &count); /* checked by the first pass */
        if (count == 0)
            break;
        if (count < 0) {
            read_long(c, &bytes);
            count = -count;
        }
        for (int64_t i = 0; i < count; i++) {
            PyObject *item = read_item(c, defer);
            if (item == NULL) {
                Py_DECREF(items);
                Py_DECREF(key);
                return NULL;
            }
            PyTuple_SET_ITEM(items, filled++, item);
        }
    }
    clear_if_full(reader.item_lists);
    if (PyDict_SetItem(reader.item_lists, key, items) < 0)
        Py_CLEAR(items);
    Py_DECREF(key);
    return items;
}

static int valid_month(const unsigned char *s, Py_ssize_t size) {
    /* YYYY-MM, year 2000-2099, month 01-12 (records._MONTH) */
    if (size != 7 || s[0] != '2' || s[1] != '0' || !is_digit(s[2]) || !is_digit(s[3]) ||
        s[4] != '-' || !is_digit(s[5]) || !is_digit(s[6]))
        return 0;
    int month = (s[5] - '0') * 10 + (s[6] - '0');
    return month >= 1 && month <= 12;
}

static PyObject *timestamp(int64_t millis) {
    /* fastavro: epoch + timedelta(microseconds=millis * 1000) */
    int64_t days = millis / 86400000, rest = millis % 86400000;
    PyObject *delta = PyDelta_FromDSU((int)days, (int)(rest / 1000), (int)(rest % 1000) * 1000);
    if (delta == NULL)
        return NULL;
    PyObject *instant = PyNumber_Add(reader.epoch, delta);
    Py_DECREF(delta);
    return instant;
}

/* --- WorkerRegistration ------------------------------------------------------------------- */

static PyObject *optional_location(Cursor *c, int *defer) {
    int64_t branch;
    if (read_long(c, &branch) < 0 || (branch != 0 && branch != 1)) {
        *defer = 1;
        return NULL;
    }
    if (branch == 0)
        Py_RETURN_NONE;
    return read_location(c, defer);
}

static int read_boolean(Cursor *c, PyObject **value) {
    if (c->at >= c->end || *c->at > 1)
        return -1;
    *value = Py_NewRef(*c->at++ ? Py_True : Py_False);
    return 0;
}

static PyObject *decode_registration(const unsigned char *body, Py_ssize_t size, const char *key,
                                     Py_ssize_t key_size) {
    Cursor c = {body, body + size};
    const unsigned char *uan, *member, *occupation = NULL;
    Py_ssize_t uan_size, member_size, occupation_size = 0;
    int64_t branch, millis;
    int defer = 0;

    if (read_ascii(&c, &uan, &uan_size) < 0 || uan_size != 12 || !digits_at(uan, 12) ||
        key_size != 12 || memcmp(uan, key, 12) != 0 || read_text(&c, &member, &member_size) < 0 ||
        !not_blank(member, member_size))
        Py_RETURN_NONE;
    PyObject *permanent = read_location(&c, &defer);
    if (permanent == NULL)
        return defer ? Py_NewRef(Py_None) : NULL;
    PyObject *present = optional_location(&c, &defer);
    if (present == NULL) {
        Py_DECREF(permanent);
        return defer ? Py_NewRef(Py_None) : NULL;
    }
    PyObject *consent = NULL, *sms = NULL;
    if (read_long(&c, &branch) < 0 || (branch != 0 && branch != 1) ||
        (branch == 1 && read_text(&c, &occupation, &occupation_size) < 0) ||
        read_boolean(&c, &consent) < 0 || read_boolean(&c, &sms) < 0 ||
        read_long(&c, &millis) < 0 || millis < 0 || millis >= MAX_MILLIS || c.at != c.end) {
        Py_XDECREF(consent);
        Py_XDECREF(sms);
        Py_DECREF(permanent);
        Py_DECREF(present);
        Py_RETURN_NONE;
    }
    PyObject *values[REGISTRATION_FIELDS] = {
        text_object(uan, uan_size),
        text_object(member, member_size),
        permanent,
        present,
        branch == 1 ? text_object(occupation, occupation_size) : Py_NewRef(Py_None),
        consent,
        sms,
        timestamp(millis),
    };
    return build(&reader.registration, values);
}

/* --- read(header, payload, key), read_registration(header, payload, key) ------------------ */

typedef PyObject *(*Decoder)(const unsigned char *, Py_ssize_t, const char *, Py_ssize_t);

static PyObject *decode_collection(const unsigned char *body, Py_ssize_t size, const char *key,
                        Py_ssize_t key_size) {
    Cursor c = {body, body + size};
    const unsigned char *transaction, *source, *card, *member, *fps, *month;
    Py_ssize_t transaction_size, source_size, card_size, member_size, fps_size, month_size;
    int64_t auth, portability, millis;
    long card_state;
    int defer = 0;

    if (read_text(&c, &transaction, &transaction_size) < 0 ||
        read_text(&c, &source, &source_size) < 0 || read_text(&c, &card, &card_size) < 0 ||
        read_text(&c, &member, &member_size) < 0 || read_long(&c, &auth) < 0 || auth < 0 ||
        auth >= PyTuple_GET_SIZE(reader.auth_modes) || read_text(&c, &fps, &fps_size) < 0)
        Py_RETURN_NONE;
    if (!not_blank(transaction, transaction_size) || !not_blank(member, member_size) ||
        member_size != key_size || memcmp(member, key, (size_t)key_size) != 0)
        Py_RETURN_NONE;
    PyObject *location = read_location(&c, &defer);
    if (location == NULL)
        return defer ? Py_NewRef(Py_None) : NULL;
    if (read_int(&c, &card_state) < 0 || card_state < 0 || card_state > 255 ||
        !reader.states[card_state] || read_long(&c, &portability) < 0 || portability < 0 ||
        portability >= PyTuple_GET_SIZE(reader.portabilities) ||
        read_text(&c, &month, &month_size) < 0 || !valid_month(month, month_size) ||
        read_long(&c, &millis) < 0 || millis < 0 || millis >= MAX_MILLIS) {
        Py_DECREF(location);
        Py_RETURN_NONE;
    }
    PyObject *items = read_items(&c, &defer);
    if (items == NULL) {
        Py_DECREF(location);
        return defer ? Py_NewRef(Py_None) : NULL;
    }
    if (c.at != c.end) { /* trailing bytes */
        Py_DECREF(location);
        Py_DECREF(items);
        Py_RETURN_NONE;
    }
    PyObject *values[COLLECTION_FIELDS] = {
        text_object(transaction, transaction_size),
        text_object(source, source_size),
        text_object(card, card_size),
        text_object(member, member_size),
        Py_NewRef(PyTuple_GET_ITEM(reader.auth_modes, auth)),
        text_object(fps, fps_size),
        location,
        PyLong_FromLong(card_state),
        Py_NewRef(PyTuple_GET_ITEM(reader.portabilities, portability)),
        text_object(month, month_size),
        timestamp(millis),
        items,
    };
    return build(&reader.collection, values);
}

static PyObject *framed(PyObject *const *args, Py_ssize_t nargs, Decoder decoder) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "a reader takes 3 arguments: header, payload, key");
        return NULL;
    }
    if (!reader.configured) {
        PyErr_SetString(PyExc_RuntimeError, "the collection reader is not configured");
        return NULL;
    }
    PyObject *header = args[0], *payload = args[1], *key = args[2];
    if (!PyBytes_CheckExact(header) || !(key == Py_None || PyBytes_CheckExact(key))) {
        PyErr_SetString(PyExc_TypeError, "header must be bytes and key bytes or None");
        return NULL;
    }
    if (!PyBytes_CheckExact(payload) || key == Py_None)
        Py_RETURN_NONE;
    Py_ssize_t size = PyBytes_GET_SIZE(payload), header_size = PyBytes_GET_SIZE(header);
    const char *bytes = PyBytes_AS_STRING(payload);
    if (size < header_size || memcmp(bytes, PyBytes_AS_STRING(header), (size_t)header_size) != 0)
        Py_RETURN_NONE;
    PyObject *made = decoder((const unsigned char *)bytes + header_size, size - header_size,
                             PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
    if (made == NULL && PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyErr_Clear(); /* a date datetime cannot hold: the general path decides */
        Py_RETURN_NONE;
    }
    return made;
}

static PyObject *read_collection(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    return framed(args, nargs, decode_collection);
}

static PyObject *read_registration(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    return framed(args, nargs, decode_registration);
}

/* --- configure(...) ----------------------------------------------------------------------- */

static int shape_of(Shape *shape, PyObject *type, PyObject *names, int expected) {
    if (!PyType_Check(type) || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) != expected) {
        PyErr_SetString(PyExc_TypeError, "expected a class and a tuple of its field names");
        return -1;
    }
    for (int i = 0; i < expected; i++) {
        PyObject *setter = PyObject_GetAttr(type, PyTuple_GET_ITEM(names, i));
        if (setter == NULL)
            return -1;
        if (Py_TYPE(setter)->tp_descr_set == NULL) {
            Py_DECREF(setter);
            PyErr_SetString(PyExc_TypeError, "a field is not a slot of its class");
            return -1;
        }
        Py_XSETREF(shape->setters[i], setter);
    }
    Py_INCREF(type);
    Py_XSETREF(shape->type, (PyTypeObject *)type);
    shape->fields = expected;
    return 0;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *collection, *collection_fields, *location, *location_fields, *item, *item_fields;
    PyObject *registration, *registration_fields, *auth_modes, *portabilities, *epoch, *states;
    if (!PyArg_ParseTuple(args, "OO!OO!OO!OO!O!O!OO:configure", &collection, &PyTuple_Type,
                          &collection_fields, &location, &PyTuple_Type, &location_fields, &item,
                          &PyTuple_Type, &item_fields, &registration, &PyTuple_Type,
                          &registration_fields, &PyTuple_Type, &auth_modes, &PyTuple_Type,
                          &portabilities, &epoch, &states))
        return NULL;
    reader.configured = 0;
    if (shape_of(&reader.collection, collection, collection_fields, COLLECTION_FIELDS) < 0 ||
        shape_of(&reader.location, location, location_fields, LOCATION_FIELDS) < 0 ||
        shape_of(&reader.item, item, item_fields, ITEM_FIELDS) < 0 ||
        shape_of(&reader.registration, registration, registration_fields, REGISTRATION_FIELDS) <
            0)
        return NULL;
    if (!PyDateTime_Check(epoch)) {
        PyErr_SetString(PyExc_TypeError, "epoch must be a datetime");
        return NULL;
    }
    PyObject *iterator = PyObject_GetIter(states);
    if (iterator == NULL)
        return NULL;
    memset(reader.states, 0, sizeof reader.states);
    PyObject *code;
    while ((code = PyIter_Next(iterator)) != NULL) {
        long value = PyLong_AsLong(code);
        Py_DECREF(code);
        if (value == -1 && PyErr_Occurred())
            break;
        if (value >= 0 && value <= 255)
            reader.states[value] = 1;
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred())
        return NULL;
    Py_XSETREF(reader.auth_modes, Py_NewRef(auth_modes));
    Py_XSETREF(reader.portabilities, Py_NewRef(portabilities));
    Py_XSETREF(reader.epoch, Py_NewRef(epoch));
    Py_XSETREF(reader.locations, PyDict_New());
    Py_XSETREF(reader.item_lists, PyDict_New());
    if (reader.locations == NULL || reader.item_lists == NULL)
        return NULL;
    reader.configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read", (PyCFunction)(void (*)(void))read_collection, METH_FASTCALL,
     "read(header, payload, key) -> RationCollection | None"},
    {"read_registration", (PyCFunction)(void (*)(void))read_registration, METH_FASTCALL,
     "read_registration(header, payload, key) -> WorkerRegistration | None"},
    {"configure", configure, METH_VARARGS, "Set the domain classes and tables read() uses."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "eshram_locator._collection_reader",
    "The collections stream's fast reader (see eshram_locator.intake.collection_reader).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__collection_reader(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    return PyModule_Create(&module_def);
}
