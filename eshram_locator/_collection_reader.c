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
 * read_collections() runs the locator's per-message loop (consumers/locator.py,
 * LocatorProcess._read) for a consumed batch's common case: a collection message without an
 * error that read() takes. It returns the collections in arrival order, grouped by member as
 * eshram_locator.locating.by_member groups them (None where by_member must decide: a transaction
 * id repeated with other bytes), the next offset of every partition as the loop records them
 * (each message it does not skip or raise for, its offset + 1; keys in order of first arrival),
 * and the indices of the messages it left to the loop (errors, the registry, what read() leaves,
 * a message without topic, partition or offset). It returns None, having read nothing that
 * counts, for a batch with a message of types it does not know (a topic not a str, an offset
 * not an int or past 64 bits): the loop reads that batch whole.
 *
 * Frozen slotted dataclasses are filled slot by slot, as PyMember_SetOne fills them for their
 * generated __init__ (through object.__setattr__), without its per-field Python calls.
 * Equal shop locations and item lists are shared through caches keyed by their encoded bytes
 * (tables of their own, see Table), and so are the strings of fields with few distinct values
 * (source, shop id, month). Strings are checked eight bytes at a time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <structmember.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#define COLLECTION_FIELDS 12
#define LOCATION_FIELDS 5
#define ITEM_FIELDS 3
#define REGISTRATION_FIELDS 8
#define MAX_ITEMS 100
#define MAX_MILLIS (INT64_C(1) << 42) /* 2109-05-15 */

#if PY_VERSION_HEX < 0x030C0000
#define TEXT_READY(text) PyUnicode_READY(text)
#else
#define TEXT_READY(text) 0 /* every str is ready */
#endif

typedef struct {
    PyTypeObject *type;
    PyObject *setters[COLLECTION_FIELDS]; /* member descriptors, in field order */
    /* Where each slot is in an instance, to fill a new one as PyMember_SetOne would (-1: through
       its descriptor). */
    Py_ssize_t offsets[COLLECTION_FIELDS];
    int fields;
} Shape;

/* A table keyed by bytes (the caches of equal parts, a batch's transaction ids): open
   addressing with linear probing of at most TABLE_PROBES entries. An entry that does not fit
   is not added, so that a lookup never probes further, whatever the keys' hashes. */
#define TABLE_PROBES 64
#define TABLE_MIN 1024      /* entries */
#define CACHE_MAX (1 << 19) /* entries: a cache that would be fuller than half is emptied */

typedef struct {
    uint64_t hash;
    PyObject *key;   /* a reference: bytes, or an ASCII str; NULL: the entry is empty */
    PyObject *value; /* a reference */
} Entry;

typedef struct {
    Entry *entries; /* NULL: no entry yet */
    size_t capacity, used;
    int lost; /* a key was not added, or was dropped as the table grew */
} Table;

static struct {
    int configured;
    Shape collection, location, item, registration;
    PyObject *auth_modes;    /* tuple: enum index -> AuthMode */
    PyObject *portabilities; /* tuple: enum index -> Portability */
    PyObject *utc;           /* the tzinfo of the epoch, datetime(1970, 1, 1, tzinfo=UTC) */
    unsigned char states[256];
    Table locations;  /* encoded bytes -> Location */
    Table item_lists; /* encoded bytes -> tuple of CollectionItem */
    Table texts;      /* a str -> itself: the few-valued fields (sources, shops, months) */
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

/* Eight bytes at once: nonzero unless each is printable ASCII (0x20-0x7e); *digits counts
   those that are digits. No byte's sum below carries into the next one (each is at most
   0x7f + 0x60). */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* Fewer than 8 bytes, as a word: byte j of s at bits 8j (as an 8-byte load puts them on a
   little-endian machine), the others 'A' (printable, neither a digit nor a separator). */
static uint64_t load_tail(const unsigned char *s, Py_ssize_t count) {
    uint64_t word = 'A' * ONES;
    for (Py_ssize_t j = 0; j < count; j++)
        word = (word & ~(UINT64_C(0xFF) << (8 * j))) | ((uint64_t)s[j] << (8 * j));
    return word;
}

/* The last count (< 8) bytes of a string at s, before end, as load_tail gives them. */
static uint64_t load_last(const unsigned char *s, Py_ssize_t count, const unsigned char *end) {
#if PY_LITTLE_ENDIAN
    if (end - s >= 8) { /* the bytes after the string are in the buffer: one load */
        uint64_t word, kept = (UINT64_C(1) << (8 * count)) - 1;
        memcpy(&word, s, 8);
        return (word & kept) | ('A' * ONES & ~kept);
    }
#endif
    return load_tail(s, count);
}

static uint64_t check_word(uint64_t word, Py_ssize_t *digits) {
    uint64_t low = word & ~HIGHS; /* each byte's low 7 bits */
    uint64_t from_space = (low + (0x80 - 0x20) * ONES) & HIGHS;
    uint64_t from_zero = (low + (0x80 - '0') * ONES) & HIGHS;
    uint64_t past_nine = (low + (0x80 - '9' - 1) * ONES) & HIGHS;
    uint64_t is_delete = (low + ONES) & HIGHS;
    *digits += (Py_ssize_t)((((from_zero & ~past_nine) >> 7) * ONES) >> 56);
    return (word & HIGHS) | (from_space ^ HIGHS) | is_delete;
}

/* Of a word of bytes below 0x80: 0x80 in each byte equal to c. */
static uint64_t bytes_equal(uint64_t word, unsigned char c) {
    uint64_t differ = word ^ (c * ONES);
    return ~(((differ & ~HIGHS) + ~HIGHS) | differ) & HIGHS;
}

/* The top bits of the bytes of a word (0x80 or 0) as 8 bits, byte j at bit j. */
static uint64_t byte_mask(uint64_t highs) {
    return ((highs >> 7) * UINT64_C(0x0102040810204080)) >> 56;
}

/* A run of 12 digits, or dddd?dddd?dddd with each ? a space or a hyphen, in printable ASCII. */
static int has_number_shape(const unsigned char *s, Py_ssize_t n) {
#if PY_LITTLE_ENDIAN
    if (n <= 64) { /* one bit a byte: a digit (in digits), a space or a hyphen (in separators) */
        uint64_t digits = 0, separators = 0, word;
        for (Py_ssize_t i = 0; i < n; i += 8) {
            if (i + 8 <= n)
                memcpy(&word, s + i, 8);
            else
                word = load_tail(s + i, n - i);
            uint64_t from_zero = (word + (0x80 - '0') * ONES) & HIGHS; /* bytes below 0x7f */
            uint64_t past_nine = (word + (0x80 - '9' - 1) * ONES) & HIGHS;
            digits |= byte_mask(from_zero & ~past_nine) << i;
            separators |= byte_mask(bytes_equal(word, ' ') | bytes_equal(word, '-')) << i;
        }
        uint64_t two = digits & (digits >> 1), four = two & (two >> 2); /* runs from each bit */
        uint64_t twelve = four & (four >> 4) & (four >> 8);
        uint64_t grouped =
            four & (separators >> 4) & (four >> 5) & (separators >> 9) & (four >> 10);
        return (twelve | grouped) != 0;
    }
#endif
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

/* A string of printable ASCII: its bytes and length, and how many of them are digits. */
static int read_counting(Cursor *c, const unsigned char **text, Py_ssize_t *size,
                         Py_ssize_t *digits) {
    int64_t length;
    if (read_long(c, &length) < 0 || length < 0 || length > c->end - c->at)
        return -1;
    const unsigned char *s = c->at;
    uint64_t outside = 0, word;
    Py_ssize_t count = 0, i = 0;
    for (; i + 8 <= length; i += 8) {
        memcpy(&word, s + i, 8);
        outside |= check_word(word, &count);
    }
    if (i < length)
        outside |= check_word(load_last(s + i, length - i, c->end), &count);
    if (outside)
        return -1;
    c->at += length;
    *text = s;
    *size = (Py_ssize_t)length;
    *digits = count;
    return 0;
}

/* A string of printable ASCII. */
static int read_ascii(Cursor *c, const unsigned char **text, Py_ssize_t *size) {
    Py_ssize_t digits;
    return read_counting(c, text, size, &digits);
}

/* A string of printable ASCII without a number shape (which takes 12 digits). */
static int read_text(Cursor *c, const unsigned char **text, Py_ssize_t *size) {
    Py_ssize_t digits;
    if (read_counting(c, text, size, &digits) < 0)
        return -1;
    return digits >= 12 && has_number_shape(*text, *size) ? -1 : 0;
}

/* --- tables keyed by bytes: the caches of equal parts, the batch's transaction ids --------- */

static const unsigned char *key_data(PyObject *key, Py_ssize_t *size) {
    if (PyBytes_CheckExact(key)) {
        *size = PyBytes_GET_SIZE(key);
        return (const unsigned char *)PyBytes_AS_STRING(key);
    }
    *size = PyUnicode_GET_LENGTH(key);
    return PyUnicode_DATA(key);
}

/* s[0:n], where the buffer goes on to end. */
static uint64_t hash_bytes(const unsigned char *s, Py_ssize_t n, const unsigned char *end) {
    uint64_t hash = UINT64_C(0x9E3779B97F4A7C15) ^ (uint64_t)n, word;
    Py_ssize_t i = 0;
    for (;; i += 8) {
        if (i + 8 <= n)
            memcpy(&word, s + i, 8);
        else if (i < n)
            word = load_last(s + i, n - i, end);
        else
            break;
        hash = (hash ^ word) * UINT64_C(0xBF58476D1CE4E5B9);
        hash ^= hash >> 31;
    }
    hash *= UINT64_C(0x94D049BB133111EB);
    return hash ^ (hash >> 29);
}

/* The entry of the key s[0:n]; NULL when it has none. */
static Entry *table_find(Table *table, const unsigned char *s, Py_ssize_t n, uint64_t hash) {
    if (table->entries == NULL)
        return NULL;
    size_t mask = table->capacity - 1;
    for (size_t probe = 0; probe < TABLE_PROBES; probe++) {
        Entry *entry = &table->entries[(hash + probe) & mask];
        if (entry->key == NULL)
            return NULL;
        if (entry->hash != hash)
            continue;
        Py_ssize_t size;
        const unsigned char *data = key_data(entry->key, &size);
        if (size == n && memcmp(data, s, (size_t)n) == 0)
            return entry;
    }
    return NULL;
}

static void table_clear(Table *table) {
    for (size_t i = 0; table->entries != NULL && i < table->capacity; i++) {
        Py_CLEAR(table->entries[i].key);
        Py_CLEAR(table->entries[i].value);
    }
    table->used = 0;
}

static void table_free(Table *table) {
    table_clear(table);
    PyMem_Free(table->entries);
    table->entries = NULL;
    table->capacity = 0;
}

/* The empty entry for a new key of this hash, or NULL if none is within reach. */
static Entry *table_slot(Table *table, uint64_t hash) {
    size_t mask = table->capacity - 1;
    for (size_t probe = 0; probe < TABLE_PROBES; probe++) {
        Entry *entry = &table->entries[(hash + probe) & mask];
        if (entry->key == NULL)
            return entry;
    }
    return NULL;
}

/* An empty table for n keys (without growing). */
static int table_reserve(Table *table, size_t n) {
    size_t capacity = 16;
    while (capacity < 2 * n)
        capacity *= 2;
    table->entries = PyMem_Calloc(capacity, sizeof(Entry));
    if (table->entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    table->capacity = capacity;
    return 0;
}

/* Room for one more entry: the table grows up to limit entries, then is emptied. */
static int table_make_room(Table *table, size_t limit) {
    if (table->entries != NULL && 2 * (table->used + 1) <= table->capacity)
        return 0;
    if (table->capacity >= limit) {
        table_clear(table);
        return 0;
    }
    size_t capacity = table->capacity ? 2 * table->capacity : TABLE_MIN;
    Entry *entries = PyMem_Calloc(capacity, sizeof(Entry));
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Table grown = {entries, capacity, 0, table->lost};
    for (size_t i = 0; i < table->capacity; i++) {
        Entry *old = &table->entries[i];
        if (old->key == NULL)
            continue;
        Entry *entry = table_slot(&grown, old->hash);
        if (entry == NULL) { /* out of reach in the larger table too: dropped */
            grown.lost = 1;
            Py_DECREF(old->key);
            Py_DECREF(old->value);
            continue;
        }
        *entry = *old;
        grown.used++;
    }
    PyMem_Free(table->entries);
    *table = grown;
    return 0;
}

/* Adds key (a reference to it) -> value (a reference), when within reach: 1 if added, 0 if
   not, -1 on a Python error. */
static int table_add(Table *table, size_t limit, uint64_t hash, PyObject *key, PyObject *value) {
    if (table_make_room(table, limit) < 0)
        return -1;
    Entry *entry = table_slot(table, hash);
    if (entry == NULL) {
        table->lost = 1;
        return 0;
    }
    entry->hash = hash;
    entry->key = Py_NewRef(key);
    entry->value = Py_NewRef(value);
    table->used++;
    return 1;
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
    PyObject *made = shape->type->tp_alloc(shape->type, 0); /* every slot NULL */
    int failed = made == NULL;
    for (int i = 0; i < shape->fields; i++) {
        failed = failed || values[i] == NULL;
        if (!failed && shape->offsets[i] >= 0) {
            *(PyObject **)((char *)made + shape->offsets[i]) = values[i];
            continue;
        }
        if (!failed) {
            PyObject *setter = shape->setters[i];
            failed = Py_TYPE(setter)->tp_descr_set(setter, made, values[i]) < 0;
        }
        Py_XDECREF(values[i]);
    }
    if (failed) {
        Py_XDECREF(made);
        return NULL;
    }
    return made;
}

/* The cached object of the encoded bytes from start to c->at, new reference (NULL: none). */
static PyObject *cached(Table *cache, const unsigned char *start, Cursor *c, uint64_t *hash) {
    *hash = hash_bytes(start, c->at - start, c->end);
    Entry *entry = table_find(cache, start, c->at - start, *hash);
    return entry == NULL ? NULL : Py_NewRef(entry->value);
}

/* Caches made for the encoded bytes from start to c->at. Returns made (a reference), or NULL
   (made released) on a Python error. */
static PyObject *cache(Table *cache, const unsigned char *start, Cursor *c, uint64_t hash,
                       PyObject *made) {
    PyObject *key = PyBytes_FromStringAndSize((const char *)start, c->at - start);
    if (key == NULL || table_add(cache, CACHE_MAX, hash, key, made) < 0)
        Py_CLEAR(made);
    Py_XDECREF(key);
    return made;
}

/* The str of the ASCII text[0:size] (the buffer goes on to end), shared with every equal one
   read before: a new reference, NULL on a Python error. For fields with few distinct values,
   where a lookup costs less than a new str and its release. */
static PyObject *shared_text(const unsigned char *text, Py_ssize_t size,
                             const unsigned char *end) {
    uint64_t hash = hash_bytes(text, size, end);
    Entry *entry = table_find(&reader.texts, text, size, hash);
    if (entry != NULL)
        return Py_NewRef(entry->value);
    PyObject *made = text_object(text, size);
    if (made != NULL && table_add(&reader.texts, CACHE_MAX, hash, made, made) < 0)
        Py_CLEAR(made);
    return made;
}

/* An optional int: 0 (*present 0 for None), or -1 for the general path. */
static int read_optional_int(Cursor *c, int *present, long *value) {
    int64_t branch;
    if (read_long(c, &branch) < 0 || (branch != 0 && branch != 1))
        return -1;
    *present = branch == 1;
    return *present ? read_int(c, value) : 0;
}

static PyObject *int_or_none(int present, long value) {
    return present ? PyLong_FromLong(value) : Py_NewRef(Py_None);
}

/* Location: a cached instance for the same encoded bytes. New reference; NULL with *defer set
   for the general path, NULL without it on a Python error. */
static PyObject *read_location(Cursor *c, int *defer) {
    const unsigned char *start = c->at;
    long state, district, subdistrict = 0, village = 0;
    int has_subdistrict = 0, has_village = 0;
    int64_t branch = -1;
    const unsigned char *text = NULL;
    Py_ssize_t size = 0;
    if (read_int(c, &state) < 0 || read_int(c, &district) < 0 || state < 0 || state > 255 ||
        !reader.states[state] || district <= 0 ||
        read_optional_int(c, &has_subdistrict, &subdistrict) < 0 ||
        read_optional_int(c, &has_village, &village) < 0 || read_long(c, &branch) < 0 ||
        (branch != 0 && branch != 1) || (branch == 1 && read_text(c, &text, &size) < 0)) {
        *defer = 1;
        return NULL;
    }
    uint64_t hash;
    PyObject *found = cached(&reader.locations, start, c, &hash);
    if (found != NULL)
        return found;
    PyObject *values[LOCATION_FIELDS] = {
        PyLong_FromLong(state),
        PyLong_FromLong(district),
        int_or_none(has_subdistrict, subdistrict),
        int_or_none(has_village, village),
        branch == 1 ? text_object(text, size) : Py_NewRef(Py_None),
    };
    PyObject *location = build(&reader.location, values);
    return location == NULL ? NULL : cache(&reader.locations, start, c, hash, location);
}

/* A string the first pass of read_items checked. */
static const unsigned char *skip_checked(Cursor *c, Py_ssize_t *size) {
    int64_t length;
    read_long(c, &length);
    const unsigned char *text = c->at;
    c->at += length;
    *size = (Py_ssize_t)length;
    return text;
}

/* One item the first pass of read_items checked; NULL on a Python error. */
static PyObject *read_checked_item(Cursor *c) {
    Py_ssize_t commodity_size, scheme_size;
    const unsigned char *commodity = skip_checked(c, &commodity_size);
    const unsigned char *scheme = skip_checked(c, &scheme_size);
    int64_t quantity;
    read_long(c, &quantity);
    PyObject *values[ITEM_FIELDS] = {
        text_object(commodity, commodity_size),
        text_object(scheme, scheme_size),
        PyLong_FromLong((long)quantity),
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
    uint64_t hash;
    PyObject *found = cached(&reader.item_lists, start, &scan, &hash);
    if (found != NULL) {
        c->at = scan.at;
        return found;
    }
    PyObject *items = PyTuple_New((Py_ssize_t)total);
    if (items == NULL)
        return NULL;
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
            PyObject *item = read_checked_item(c);
            if (item == NULL) {
                Py_DECREF(items);
                return NULL;
            }
            PyTuple_SET_ITEM(items, filled++, item);
        }
    }
    return cache(&reader.item_lists, start, c, hash, items);
}

static int valid_month(const unsigned char *s, Py_ssize_t size) {
    /* YYYY-MM, year 2000-2099, month 01-12 (records._MONTH) */
    if (size != 7 || s[0] != '2' || s[1] != '0' || !is_digit(s[2]) || !is_digit(s[3]) ||
        s[4] != '-' || !is_digit(s[5]) || !is_digit(s[6]))
        return 0;
    int month = (s[5] - '0') * 10 + (s[6] - '0');
    return month >= 1 && month <= 12;
}

/* millis in [0, MAX_MILLIS): the datetime fastavro makes (epoch + timedelta(microseconds=millis
   * 1000), which is UTC's), made at once: the date from the days since 1970-01-01 by H. Hinnant's
   civil_from_days. */
static PyObject *timestamp(int64_t millis) {
    int64_t days = millis / 86400000, rest = millis % 86400000;
    int64_t z = days + 719468; /* days since 0000-03-01 */
    int64_t era = z / 146097, of_era = z % 146097;
    int64_t year_of_era = (of_era - of_era / 1460 + of_era / 36524 - of_era / 146096) / 365;
    int64_t of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    int64_t shifted = (5 * of_year + 2) / 153; /* month, March = 0 */
    int day = (int)(of_year - (153 * shifted + 2) / 5 + 1);
    int month = (int)(shifted < 10 ? shifted + 3 : shifted - 9);
    int year = (int)(year_of_era + era * 400 + (month <= 2));
    return PyDateTimeAPI->DateTime_FromDateAndTime(
        year, month, day, (int)(rest / 3600000), (int)(rest / 60000 % 60), (int)(rest / 1000 % 60),
        (int)(rest % 1000) * 1000, reader.utc, PyDateTimeAPI->DateTimeType);
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

/* The fields read_collections() groups and compares by, borrowed from the collection. */
typedef struct {
    PyObject *transaction, *member;
    const unsigned char *transaction_text; /* in the payload, up to end */
    Py_ssize_t transaction_size;
    const unsigned char *end;
} Parts;

static PyObject *collection_of(const unsigned char *body, Py_ssize_t size, const char *key,
                               Py_ssize_t key_size, Parts *parts) {
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
        shared_text(source, source_size, c.end),
        text_object(card, card_size),
        text_object(member, member_size),
        Py_NewRef(PyTuple_GET_ITEM(reader.auth_modes, auth)),
        shared_text(fps, fps_size, c.end),
        location,
        PyLong_FromLong(card_state),
        Py_NewRef(PyTuple_GET_ITEM(reader.portabilities, portability)),
        shared_text(month, month_size, c.end),
        timestamp(millis),
        items,
    };
    if (parts != NULL) { /* build() keeps them in the collection, or fails */
        parts->transaction = values[0];
        parts->member = values[3];
        parts->transaction_text = transaction;
        parts->transaction_size = transaction_size;
        parts->end = c.end;
    }
    return build(&reader.collection, values);
}

static PyObject *decode_collection(const unsigned char *body, Py_ssize_t size, const char *key,
                                   Py_ssize_t key_size) {
    return collection_of(body, size, key, key_size, NULL);
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

/* --- read_collections(header, messages, collections_topic): a consumed batch -------------- */

/* The Message methods read_collections() calls, interned at import. */
enum { ERROR, TOPIC, PARTITION, OFFSET, VALUE, KEY, METHODS };
static const char *const method_names[METHODS] = {"error",  "topic", "partition",
                                                   "offset", "value", "key"};
static PyObject *methods_interned[METHODS];

/* The methods of the batch's messages' type: the C functions of those that are plain methods
   without arguments (confluent_kafka.Message's), which are called as Python would call them. */
typedef struct {
    PyTypeObject *type;             /* a reference; NULL before the first message */
    PyObject *methods[METHODS];     /* references: what the type has under those names */
    PyCFunction functions[METHODS]; /* NULL: called as any method */
} Methods;

static void methods_release(Methods *methods) {
    Py_CLEAR(methods->type);
    for (int i = 0; i < METHODS; i++)
        Py_CLEAR(methods->methods[i]);
}

static void methods_of(Methods *methods, PyTypeObject *type) {
    methods_release(methods);
    methods->type = (PyTypeObject *)Py_NewRef(type);
    for (int i = 0; i < METHODS; i++) {
        /* An instance attribute would come first: no such type is taken. */
        PyObject *found = type->tp_dictoffset == 0
                              ? PyObject_GetAttr((PyObject *)type, methods_interned[i])
                              : NULL;
        if (found == NULL)
            PyErr_Clear(); /* the call as any method raises what it raises */
        methods->methods[i] = found;
        methods->functions[i] =
            found != NULL && Py_IS_TYPE(found, &PyMethodDescr_Type) &&
                    ((PyMethodDescrObject *)found)->d_method->ml_flags == METH_NOARGS
                ? ((PyMethodDescrObject *)found)->d_method->ml_meth
                : NULL;
    }
}

static PyObject *call(Methods *methods, PyObject *message, int method) {
    if (Py_TYPE(message) != methods->type)
        methods_of(methods, Py_TYPE(message));
    PyCFunction function = methods->functions[method];
    return function != NULL ? function(message, NULL)
                            : PyObject_CallMethodNoArgs(message, methods_interned[method]);
}

/* Equal str objects (ready, as every str is once made by the C API). */
static int same_text(PyObject *a, PyObject *b) {
    if (a == b)
        return 1;
    Py_ssize_t length = PyUnicode_GET_LENGTH(a);
    int kind = PyUnicode_KIND(a);
    return length == PyUnicode_GET_LENGTH(b) && kind == PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)(length * kind)) == 0;
}

/* A partition of the batch: the offset after its last message so far. */
typedef struct {
    PyObject *topic, *partition; /* of its first message */
    long long number, next;
    int on_collections; /* topic is collections_topic */
} Partition;

typedef struct {
    PyObject *header, *collections_topic; /* borrowed: the arguments */
    PyObject *collections;                /* list, in arrival order */
    PyObject *grouped; /* dict: member_ref -> list; NULL once by_member must decide */
    Table seen;        /* transaction_id -> the payload that read as it */
    PyObject *leftovers; /* list of the indices of the messages left to Python */
    Methods methods;
    /* In order of first arrival, which is the order of next_offsets' keys. */
    Partition *partitions;
    Py_ssize_t count, capacity, last; /* last: the previous message's */
} Batch;

/* The batch's entry for the partition (a handful per batch: a linear search, which starts at
   the previous message's, as librdkafka hands out a partition's messages together). */
static Partition *partition_of(Batch *b, PyObject *topic, PyObject *partition, long long number) {
    if (b->count > 0) {
        Partition *last = &b->partitions[b->last];
        if (last->number == number && same_text(last->topic, topic))
            return last;
        for (Py_ssize_t i = 0; i < b->count; i++) {
            Partition *known = &b->partitions[i];
            if (known->number == number && same_text(known->topic, topic)) {
                b->last = i;
                return known;
            }
        }
    }
    if (b->count == b->capacity) {
        Py_ssize_t capacity = b->capacity ? 2 * b->capacity : 16;
        Partition *grown = PyMem_Realloc(b->partitions, (size_t)capacity * sizeof(Partition));
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        b->partitions = grown;
        b->capacity = capacity;
    }
    Partition *added = &b->partitions[b->count];
    added->topic = Py_NewRef(topic);
    added->partition = Py_NewRef(partition);
    added->number = number;
    added->on_collections = same_text(topic, b->collections_topic);
    b->last = b->count++;
    return added;
}

/* next_offsets: {(topic, partition): next offset}, in order of first arrival. */
static PyObject *next_offsets(Batch *b) {
    PyObject *offsets = PyDict_New();
    for (Py_ssize_t i = 0; offsets != NULL && i < b->count; i++) {
        Partition *known = &b->partitions[i];
        PyObject *key = PyTuple_Pack(2, known->topic, known->partition);
        PyObject *next = key == NULL ? NULL : PyLong_FromLongLong(known->next);
        if (next == NULL || PyDict_SetItem(offsets, key, next) < 0)
            Py_CLEAR(offsets);
        Py_XDECREF(key);
        Py_XDECREF(next);
    }
    return offsets;
}

/* As by_member groups: a transaction id seen before with the same bytes is the same record,
   which by_member keeps once (the first; equal contents); any other repeat leaves the grouping
   to by_member (grouped NULL). */
static int group(Batch *b, PyObject *collection, Parts *parts, PyObject *payload) {
    uint64_t hash = hash_bytes(parts->transaction_text, parts->transaction_size, parts->end);
    Entry *first =
        table_find(&b->seen, parts->transaction_text, parts->transaction_size, hash);
    if (first != NULL) {
        PyObject *before = first->value;
        if (before != payload &&
            (PyBytes_GET_SIZE(before) != PyBytes_GET_SIZE(payload) ||
             memcmp(PyBytes_AS_STRING(before), PyBytes_AS_STRING(payload),
                    (size_t)PyBytes_GET_SIZE(payload)) != 0))
            Py_CLEAR(b->grouped);
        return 0;
    }
    if (table_add(&b->seen, (size_t)-1, hash, parts->transaction, payload) < 0)
        return -1;
    if (b->seen.lost) { /* a transaction id it may not find again */
        Py_CLEAR(b->grouped);
        return 0;
    }
    PyObject *list = PyDict_GetItemWithError(b->grouped, parts->member);
    if (list != NULL)
        return PyList_Append(list, collection);
    if (PyErr_Occurred() || (list = PyList_New(1)) == NULL)
        return -1;
    PyList_SET_ITEM(list, 0, Py_NewRef(collection));
    int failed = PyDict_SetItem(b->grouped, parts->member, list);
    Py_DECREF(list);
    return failed;
}

enum { TAKEN, LEFT, WHOLE_BATCH, FAILED };

/* One message: TAKEN (a collection read here), LEFT (to Python's loop), WHOLE_BATCH (a
   message this function cannot tell what Python would do with: Python reads the whole batch),
   FAILED (a Python error). */
static int read_message(Batch *b, PyObject *message) {
    PyObject *error = call(&b->methods, message, ERROR);
    if (error == NULL)
        return FAILED;
    int has_error = error != Py_None;
    Py_DECREF(error);
    if (has_error)
        return LEFT; /* logged and skipped, or raised, in Python */
    int outcome = FAILED;
    PyObject *topic = NULL, *partition = NULL, *offset = NULL, *payload = NULL, *key = NULL;
    Methods *methods = &b->methods;
    if ((topic = call(methods, message, TOPIC)) == NULL ||
        (partition = call(methods, message, PARTITION)) == NULL ||
        (offset = call(methods, message, OFFSET)) == NULL)
        goto done;
    if (topic == Py_None || partition == Py_None || offset == Py_None) {
        outcome = LEFT; /* Python raises */
        goto done;
    }
    if (!PyUnicode_CheckExact(topic) || !PyLong_CheckExact(partition) ||
        !PyLong_CheckExact(offset) || TEXT_READY(topic) < 0) {
        outcome = PyErr_Occurred() ? FAILED : WHOLE_BATCH;
        goto done;
    }
    long long partition_value = PyLong_AsLongLong(partition);
    long long offset_value = PyLong_AsLongLong(offset);
    if ((partition_value == -1 || offset_value == -1) && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            outcome = WHOLE_BATCH;
        }
        goto done;
    }
    if (offset_value == LLONG_MAX) {
        outcome = WHOLE_BATCH;
        goto done;
    }
    /* Python records offset + 1 for every message it does not skip or raise for. */
    Partition *at = partition_of(b, topic, partition, partition_value);
    if (at == NULL)
        goto done;
    at->next = offset_value + 1;
    outcome = LEFT;
    if (!at->on_collections)
        goto done;
    outcome = FAILED;
    if ((payload = call(methods, message, VALUE)) == NULL ||
        (key = call(methods, message, KEY)) == NULL)
        goto done;
    outcome = LEFT; /* what read() returns None for, or raises for (a key not bytes) */
    Py_ssize_t header_size = PyBytes_GET_SIZE(b->header);
    if (!PyBytes_CheckExact(payload) || !PyBytes_CheckExact(key) ||
        PyBytes_GET_SIZE(payload) < header_size ||
        memcmp(PyBytes_AS_STRING(payload), PyBytes_AS_STRING(b->header), (size_t)header_size) != 0)
        goto done;
    Parts parts;
    PyObject *collection = collection_of(
        (const unsigned char *)PyBytes_AS_STRING(payload) + header_size,
        PyBytes_GET_SIZE(payload) - header_size, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
        &parts);
    if (collection == NULL) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError))
            PyErr_Clear(); /* as read(): the general path decides */
        else
            outcome = FAILED;
        goto done;
    }
    if (collection == Py_None) {
        Py_DECREF(collection);
        goto done;
    }
    outcome = PyList_Append(b->collections, collection) < 0 ||
                      (b->grouped != NULL && group(b, collection, &parts, payload) < 0)
                  ? FAILED
                  : TAKEN;
    Py_DECREF(collection);
done:
    Py_XDECREF(topic);
    Py_XDECREF(partition);
    Py_XDECREF(offset);
    Py_XDECREF(payload);
    Py_XDECREF(key);
    return outcome;
}

static PyObject *read_collections(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "read_collections takes 3 arguments: header, messages, collections_topic");
        return NULL;
    }
    if (!reader.configured) {
        PyErr_SetString(PyExc_RuntimeError, "the collection reader is not configured");
        return NULL;
    }
    PyObject *messages = args[1];
    if (!PyBytes_CheckExact(args[0]) || !PyList_Check(messages) || !PyUnicode_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "header must be bytes, messages a list and collections_topic a str");
        return NULL;
    }
    if (TEXT_READY(args[2]) < 0)
        return NULL;
    Batch b = {
        .header = args[0],
        .collections_topic = args[2],
        .collections = PyList_New(0),
        .grouped = PyDict_New(),
        .leftovers = PyList_New(0),
    };
    PyObject *result = NULL, *offsets = NULL;
    int outcome = b.collections && b.grouped && b.leftovers &&
                          table_reserve(&b.seen, (size_t)PyList_GET_SIZE(messages)) == 0
                      ? TAKEN
                      : FAILED;
    /* The size is read again at each step: a message's methods may be Python code. */
    for (Py_ssize_t i = 0; outcome != FAILED && outcome != WHOLE_BATCH &&
                           i < PyList_GET_SIZE(messages);
         i++) {
        PyObject *message = Py_NewRef(PyList_GET_ITEM(messages, i));
        outcome = read_message(&b, message);
        Py_DECREF(message);
        if (outcome == LEFT) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(b.leftovers, index) < 0)
                outcome = FAILED;
            Py_XDECREF(index);
        }
    }
    if (outcome == WHOLE_BATCH) {
        result = Py_NewRef(Py_None);
    } else if (outcome != FAILED && (offsets = next_offsets(&b)) != NULL) {
        result = PyTuple_Pack(4, b.collections, b.grouped ? b.grouped : Py_None, offsets,
                              b.leftovers);
        Py_DECREF(offsets);
    }
    for (Py_ssize_t i = 0; i < b.count; i++) {
        Py_DECREF(b.partitions[i].topic);
        Py_DECREF(b.partitions[i].partition);
    }
    PyMem_Free(b.partitions);
    methods_release(&b.methods);
    Py_XDECREF(b.collections);
    Py_XDECREF(b.grouped);
    table_free(&b.seen);
    Py_XDECREF(b.leftovers);
    return result;
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
        PyMemberDef *member = Py_IS_TYPE(setter, &PyMemberDescr_Type)
                                  ? ((PyMemberDescrObject *)setter)->d_member
                                  : NULL;
        shape->offsets[i] = member != NULL && member->type == T_OBJECT_EX &&
                                    !(member->flags & READONLY) &&
                                    ((PyMemberDescrObject *)setter)->d_common.d_type ==
                                        (PyTypeObject *)type
                                ? member->offset
                                : -1;
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
    if (!PyDateTime_CheckExact(epoch) || PyDateTime_GET_YEAR(epoch) != 1970 ||
        PyDateTime_GET_MONTH(epoch) != 1 || PyDateTime_GET_DAY(epoch) != 1 ||
        PyDateTime_DATE_GET_HOUR(epoch) != 0 || PyDateTime_DATE_GET_MINUTE(epoch) != 0 ||
        PyDateTime_DATE_GET_SECOND(epoch) != 0 || PyDateTime_DATE_GET_MICROSECOND(epoch) != 0 ||
        PyDateTime_DATE_GET_FOLD(epoch) != 0 ||
        PyDateTime_DATE_GET_TZINFO(epoch) == Py_None) {
        PyErr_SetString(PyExc_ValueError, "epoch must be datetime(1970, 1, 1, tzinfo=UTC)");
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
    Py_XSETREF(reader.utc, Py_NewRef(PyDateTime_DATE_GET_TZINFO(epoch)));
    table_free(&reader.locations);
    table_free(&reader.item_lists);
    table_free(&reader.texts);
    reader.configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read", (PyCFunction)(void (*)(void))read_collection, METH_FASTCALL,
     "read(header, payload, key) -> RationCollection | None"},
    {"read_registration", (PyCFunction)(void (*)(void))read_registration, METH_FASTCALL,
     "read_registration(header, payload, key) -> WorkerRegistration | None"},
    {"read_collections", (PyCFunction)(void (*)(void))read_collections, METH_FASTCALL,
     "read_collections(header, messages, collections_topic) -> (collections, by member or None, "
     "next offsets, indices left) | None"},
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
    for (int i = 0; i < METHODS; i++)
        if (methods_interned[i] == NULL &&
            (methods_interned[i] = PyUnicode_InternFromString(method_names[i])) == NULL)
            return NULL;
    return PyModule_Create(&module_def);
}
