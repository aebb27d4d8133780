/*
 * The member histories' fast merge: a member's collections of months after every stored month,
 * added to the stored form of eshram_locator.domain.history.MemberHistory in one call.
 *
 * That is the common batch: a member collects once a month, and a month's collections arrive
 * after the previous month's. merge_later() computes what MemberHistory.add would, for each
 * collection, followed by may_move() and to_bytes(): the packed digests of the transactions it
 * counts (rule 8, keys "source/transaction_id" as store.observation_key builds them), one stored
 * line per new month appended ("YYYY-MM", "1" or "0", the month's summary as orjson writes it),
 * whether the worker's timeline could have changed, and the new months' monthly district (rule
 * 3: None without presence, False when they are not all one district), which tells that without
 * the stored history (history.later_months). It returns None, never raises for such
 * input, and leaves the history to the general path, when:
 *   - a collection's month is not after the last stored month, or is not 7 bytes;
 *   - a string (source, transaction id, shop id, pincode, month) has a byte outside printable
 *     ASCII, a quote or a backslash (JSON would escape it);
 *   - a time is not in datetime.UTC, or an LGD code is not an int that fits 64 bits;
 *   - an object is not a RationCollection (or its shop not a Location), an attribute is of
 *     another type, or there are more than 100,000 collections.
 * tests/unit/test_history_merge.py checks, on generated histories and collections, that the
 * result is None or exactly the general path's (same stored bytes, same may_move).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <structmember.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MONTH_BYTES 7
#define MAX_COLLECTIONS 100000
#define SMALL 8 /* collections of one member handled in stack space */

/* --- SHA-256 (FIPS 180-4), only what a digest of a short key needs ------------------------ */

typedef struct {
    uint32_t state[8];
    uint64_t length;
    unsigned char block[64];
    size_t used;
} Sha256;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block_portable(Sha256 *h, const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h->state[0], b = h->state[1], c = h->state[2], d = h->state[3];
    uint32_t e = h->state[4], f = h->state[5], g = h->state[6], hh = h->state[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] +
                      w[i];
        uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h->state[0] += a;
    h->state[1] += b;
    h->state[2] += c;
    h->state[3] += d;
    h->state[4] += e;
    h->state[5] += f;
    h->state[6] += g;
    h->state[7] += hh;
}

/* The same block with the processor's SHA extensions (x86-64 with SHA-NI and SSE4.1), chosen at
 * import when the processor has them: the portable block is the largest single part of a merge.
 * The message schedule four words at a time, each round group as in Intel's description of
 * the instructions; the state is kept as ABEF and CDGH. */
/* (GCC 7 brought __get_cpuid_count; older compilers build the portable code only.) */
#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 7))
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_EXTENSIONS 1

__attribute__((target("sha,sse4.1"))) static void sha256_block_extensions(Sha256 *h,
                                                                           const unsigned char *p) {
    const __m128i big_endian = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h->state[0]), 0xB1);
    __m128i hgfe = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h->state[4]), 0x1B);
    __m128i abef = _mm_alignr_epi8(dcba, hgfe, 8);
    __m128i cdgh = _mm_blend_epi16(hgfe, dcba, 0xF0);
    const __m128i abef_before = abef, cdgh_before = cdgh;
    __m128i w[4];
    for (int i = 0; i < 16; i++) {
        __m128i *words = &w[i % 4];
        if (i < 4) {
            *words = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), big_endian);
        } else {
            /* words 4i..4i+3 from those of groups i-4 (here), i-3, i-2 and i-1 */
            __m128i next = w[(i + 1) % 4], two_back = w[(i + 2) % 4], last = w[(i + 3) % 4];
            __m128i sum = _mm_add_epi32(_mm_sha256msg1_epu32(*words, next),
                                        _mm_alignr_epi8(last, two_back, 4));
            *words = _mm_sha256msg2_epu32(sum, last);
        }
        __m128i message = _mm_add_epi32(*words, _mm_loadu_si128((const __m128i *)&K[4 * i]));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, message);
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(message, 0x0E));
    }
    abef = _mm_add_epi32(abef, abef_before);
    cdgh = _mm_add_epi32(cdgh, cdgh_before);
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&h->state[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&h->state[4], _mm_alignr_epi8(dchg, feba, 8));
}

static int has_sha_extensions(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1))
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b >> 29) & 1; /* CPUID.(EAX=7,ECX=0):EBX.SHA */
}
#endif

static void (*sha256_block)(Sha256 *h, const unsigned char *p) = sha256_block_portable;

/* The SHA extensions' block when wanted and the processor has them, the portable one otherwise. */
static void choose_sha256_block(int wanted) {
    sha256_block = sha256_block_portable;
#ifdef HAVE_SHA_EXTENSIONS
    if (wanted && has_sha_extensions())
        sha256_block = sha256_block_extensions;
#endif
}

static void sha256_init(Sha256 *h) {
    static const uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(h->state, initial, sizeof initial);
    h->length = 0;
    h->used = 0;
}

static void sha256_update(Sha256 *h, const unsigned char *data, size_t size) {
    h->length += size;
    while (size > 0) {
        size_t take = 64 - h->used < size ? 64 - h->used : size;
        memcpy(h->block + h->used, data, take);
        h->used += take;
        data += take;
        size -= take;
        if (h->used == 64) {
            sha256_block(h, h->block);
            h->used = 0;
        }
    }
}

/* The first 8 bytes of the digest: transaction_digest, packed big-endian. */
static void sha256_prefix(Sha256 *h, unsigned char out[8]) {
    uint64_t bits = h->length * 8;
    static const unsigned char padding[64] = {0x80};
    sha256_update(h, padding, 1 + (119 - h->used) % 64); /* up to 56 bytes into a block */
    unsigned char size[8];
    for (int i = 0; i < 8; i++)
        size[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(h, size, 8);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (unsigned char)(h->state[i] >> (24 - 8 * j));
}

/* --- reading a collection ------------------------------------------------------------------ */

typedef struct {
    const char *text;
    Py_ssize_t size;
} Text;

typedef struct {
    Text month, fps, source, transaction;
    PyObject *month_object; /* borrowed: the collection's allocation_month */
    int64_t us;
    int presence;
    long long state, district;
    PyObject *subdistrict, *village, *pincode; /* borrowed: int or None; str or None */
    unsigned char digest[8];
} Entry;

static struct {
    PyObject *names[12]; /* interned attribute names */
    /* Where each attribute's slot lies in a RationCollection (names before A_STATE) or a
     * Location (the others), read directly; 0: read by name (not a plain object slot). */
    Py_ssize_t offsets[12];
    PyObject *biometric; /* tuple of the biometric AuthMode members */
    PyObject *others;    /* tuple of the other AuthMode members */
    PyObject *collection_type, *location_type; /* RationCollection, Location: slotted */
} merge;

enum {
    A_SOURCE,
    A_TRANSACTION,
    A_AUTH,
    A_FPS,
    A_LOCATION,
    A_MONTH,
    A_AT,
    A_STATE,
    A_DISTRICT,
    A_SUBDISTRICT,
    A_VILLAGE,
    A_PINCODE,
};

static const char *attribute_names[12] = {
    "source",         "transaction_id",  "auth_mode",        "fps_id",
    "fps_location",   "allocation_month", "transacted_at",    "state_lgd",
    "district_lgd",   "subdistrict_lgd",  "village_town_lgd", "pincode",
};

/* Borrowed attribute of a RationCollection or Location (frozen slotted dataclasses: the slot
 * is read where it lies, as its member descriptor would read it; NULL when it is unset): the
 * object keeps it alive while the caller holds the object. */
static PyObject *attribute(PyObject *object, int name) {
    Py_ssize_t offset = merge.offsets[name];
    PyObject *owner = name < A_STATE ? merge.collection_type : merge.location_type;
    if (offset > 0 && (PyObject *)Py_TYPE(object) == owner)
        return *(PyObject **)((char *)object + offset);
    PyObject *value = PyObject_GetAttr(object, merge.names[name]);
    if (value == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_DECREF(value);
    return value;
}

/* The offset of a plain object slot ``name`` of ``type`` (its member descriptor's), or 0. */
static Py_ssize_t slot_offset(PyObject *type, PyObject *name) {
    PyObject *descriptor = PyObject_GetAttr(type, name);
    if (descriptor == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t offset = 0;
    if (Py_IS_TYPE(descriptor, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descriptor)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & PY_AUDIT_READ))
            offset = member->offset;
    }
    Py_DECREF(descriptor);
    return offset;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether 8 ASCII bytes (each below 0x80) hold one that JSON would not write as it is: a
 * control character, DEL, a quote or a backslash. Each test is exact for bytes below 0x80. */
static int unplain_word(uint64_t w) {
    uint64_t quote = w ^ (ONES * '"'), backslash = w ^ (ONES * '\\'), del = w ^ (ONES * 0x7f);
    return ((((w - ONES * 0x20) & ~w) | ((quote - ONES) & ~quote) |
             ((backslash - ONES) & ~backslash) | ((del - ONES) & ~del)) &
            HIGHS) != 0;
}

static int unplain_byte(unsigned char byte) {
    return byte < 0x20 || byte > 0x7e || byte == '"' || byte == '\\';
}

/* A str that JSON writes as it is: printable ASCII, no quote, no backslash. */
static int plain_text(PyObject *value, Text *out) {
    if (value == NULL || !PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(value))
        return 0;
    const char *text = (const char *)PyUnicode_DATA(value);
    Py_ssize_t size = PyUnicode_GET_LENGTH(value), i = 0;
    for (; i + 8 <= size; i += 8) { /* eight at a time: ids are 10 to 30 characters */
        uint64_t word;
        memcpy(&word, text + i, 8);
        if (unplain_word(word))
            return 0;
    }
    for (; i < size; i++)
        if (unplain_byte((unsigned char)text[i]))
            return 0;
    out->text = text;
    out->size = size;
    return 1;
}

static int small_int(PyObject *value, long long *out) {
    if (value == NULL || !PyLong_CheckExact(value))
        return 0;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static int optional_int(PyObject *value) {
    long long ignored;
    return value == Py_None || small_int(value, &ignored);
}

static int64_t days_from_civil(int y, int m, int d) {
    /* H. Hinnant's algorithm: days since 1970-01-01 of a proleptic Gregorian date */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int epoch_us(PyObject *value, int64_t *out) {
    if (value == NULL || !PyDateTime_Check(value) ||
        PyDateTime_DATE_GET_TZINFO(value) != PyDateTime_TimeZone_UTC)
        return 0;
    int64_t days = days_from_civil(PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                                   PyDateTime_GET_DAY(value));
    int64_t seconds = days * 86400 + PyDateTime_DATE_GET_HOUR(value) * 3600 +
                      PyDateTime_DATE_GET_MINUTE(value) * 60 + PyDateTime_DATE_GET_SECOND(value);
    *out = seconds * 1000000 + PyDateTime_DATE_GET_MICROSECOND(value);
    return 1;
}

static int member_of(PyObject *tuple, PyObject *value) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++)
        if (PyTuple_GET_ITEM(tuple, i) == value)
            return 1;
    return 0;
}

/* 1 and *entry filled, or 0: the general path decides. */
static int read_entry(PyObject *collection, Entry *entry) {
    if ((PyObject *)Py_TYPE(collection) != merge.collection_type)
        return 0;
    PyObject *auth = attribute(collection, A_AUTH);
    PyObject *location = attribute(collection, A_LOCATION);
    if (auth == NULL || location == NULL || (PyObject *)Py_TYPE(location) != merge.location_type)
        return 0;
    if (member_of(merge.biometric, auth))
        entry->presence = 1;
    else if (member_of(merge.others, auth))
        entry->presence = 0;
    else
        return 0;
    entry->month_object = attribute(collection, A_MONTH);
    if (!plain_text(attribute(collection, A_SOURCE), &entry->source) ||
        !plain_text(attribute(collection, A_TRANSACTION), &entry->transaction) ||
        !plain_text(attribute(collection, A_FPS), &entry->fps) ||
        !plain_text(entry->month_object, &entry->month) ||
        entry->month.size != MONTH_BYTES || !epoch_us(attribute(collection, A_AT), &entry->us) ||
        !small_int(attribute(location, A_STATE), &entry->state) ||
        !small_int(attribute(location, A_DISTRICT), &entry->district))
        return 0;
    entry->subdistrict = attribute(location, A_SUBDISTRICT);
    entry->village = attribute(location, A_VILLAGE);
    entry->pincode = attribute(location, A_PINCODE);
    Text pincode;
    if (!optional_int(entry->subdistrict) || !optional_int(entry->village) ||
        entry->pincode == NULL ||
        (entry->pincode != Py_None && !plain_text(entry->pincode, &pincode)))
        return 0;
    Sha256 h;
    sha256_init(&h);
    sha256_update(&h, (const unsigned char *)entry->source.text, (size_t)entry->source.size);
    sha256_update(&h, (const unsigned char *)"/", 1);
    sha256_update(&h, (const unsigned char *)entry->transaction.text,
                  (size_t)entry->transaction.size);
    sha256_prefix(&h, entry->digest);
    return 1;
}

/* --- comparing ----------------------------------------------------------------------------- */

static int compare_text(Text a, Text b) {
    Py_ssize_t shorter = a.size < b.size ? a.size : b.size;
    int order = memcmp(a.text, b.text, (size_t)shorter);
    if (order != 0)
        return order;
    return (a.size > b.size) - (a.size < b.size);
}

/* The keys "source/transaction_id" of two entries, compared as the strings they make. */
static int compare_keys(const Entry *a, const Entry *b) {
    Text parts_a[3] = {a->source, {"/", 1}, a->transaction};
    Text parts_b[3] = {b->source, {"/", 1}, b->transaction};
    int ia = 0, ib = 0;
    Py_ssize_t oa = 0, ob = 0;
    for (;;) {
        while (ia < 3 && oa == parts_a[ia].size) {
            ia++;
            oa = 0;
        }
        while (ib < 3 && ob == parts_b[ib].size) {
            ib++;
            ob = 0;
        }
        if (ia == 3 || ib == 3)
            return (ia != 3) - (ib != 3);
        unsigned char ca = (unsigned char)parts_a[ia].text[oa++];
        unsigned char cb = (unsigned char)parts_b[ib].text[ob++];
        if (ca != cb)
            return ca < cb ? -1 : 1;
    }
}

/* (time, key): which presence is the later one */
static int later(const Entry *a, const Entry *b) {
    if (a->us != b->us)
        return a->us > b->us;
    return compare_keys(a, b) > 0;
}

static int by_month(const void *a, const void *b) {
    const Entry *x = *(const Entry *const *)a, *y = *(const Entry *const *)b;
    int order = memcmp(x->month.text, y->month.text, MONTH_BYTES);
    return order != 0 ? order : (x > y) - (x < y);
}

static int by_fps(const void *a, const void *b) {
    return compare_text((*(const Entry *const *)a)->fps, (*(const Entry *const *)b)->fps);
}

typedef struct {
    long long state, district, count;
    const Entry *latest;
} Place;

static int by_district(const void *a, const void *b) {
    const Place *x = a, *y = b;
    if (x->state != y->state)
        return x->state < y->state ? -1 : 1;
    return (x->district > y->district) - (x->district < y->district);
}

/* --- writing ------------------------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t size, capacity;
    int failed;
    int borrowed; /* data is the caller's (stack) space, not malloc'd */
} Buffer;

static void put(Buffer *b, const char *text, size_t size) {
    if (b->failed)
        return;
    if (b->size + size > b->capacity) {
        size_t capacity = b->capacity ? b->capacity : 256;
        while (capacity < b->size + size)
            capacity *= 2;
        char *data = b->borrowed ? malloc(capacity) : realloc(b->data, capacity);
        if (data == NULL) {
            b->failed = 1;
            return;
        }
        if (b->borrowed)
            memcpy(data, b->data, b->size);
        b->borrowed = 0;
        b->data = data;
        b->capacity = capacity;
    }
    memcpy(b->data + b->size, text, size);
    b->size += size;
}

static void put_char(Buffer *b, char c) { put(b, &c, 1); }

static void put_int(Buffer *b, long long value) {
    char text[24];
    char *at = text + sizeof text;
    unsigned long long magnitude = value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        *--at = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (value < 0)
        *--at = '-';
    put(b, at, (size_t)(text + sizeof text - at));
}

static void put_string(Buffer *b, Text text) {
    put_char(b, '"');
    put(b, text.text, (size_t)text.size);
    put_char(b, '"');
}

static void put_optional(Buffer *b, PyObject *value) {
    Text text;
    long long number;
    if (value == Py_None)
        put(b, "null", 4);
    else if (small_int(value, &number))
        put_int(b, number);
    else if (plain_text(value, &text))
        put_string(b, text);
    else
        b->failed = 1; /* checked by read_entry */
}

/* One stored month line: "YYYY-MM", "1"/"0", [transactions, [fps ids], [places]] as orjson
 * writes MemberHistory's month entry. Its places (sorted) go to *places, their count returned. */
static Py_ssize_t put_month(Buffer *b, Entry **month, Py_ssize_t count, Place *places,
                            Entry **scratch) {
    Py_ssize_t found = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const Entry *e = month[i];
        if (!e->presence)
            continue;
        Py_ssize_t p = 0;
        while (p < found && !(places[p].state == e->state && places[p].district == e->district))
            p++;
        if (p == found) {
            places[found++] = (Place){e->state, e->district, 1, e};
        } else {
            places[p].count++;
            if (later(e, places[p].latest))
                places[p].latest = e;
        }
    }
    qsort(places, (size_t)found, sizeof *places, by_district);
    put(b, month[0]->month.text, MONTH_BYTES);
    put(b, found ? "1[" : "0[", 2);
    put_int(b, (long long)count);
    put(b, ",[", 2);
    memcpy(scratch, month, (size_t)count * sizeof *scratch);
    qsort(scratch, (size_t)count, sizeof *scratch, by_fps);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i > 0 && compare_text(scratch[i]->fps, scratch[i - 1]->fps) == 0)
            continue;
        if (i > 0)
            put_char(b, ',');
        put_string(b, scratch[i]->fps);
    }
    put(b, "],[", 3);
    for (Py_ssize_t p = 0; p < found; p++) {
        const Entry *e = places[p].latest;
        put(b, p ? ",[" : "[", p ? 2 : 1);
        put_int(b, places[p].state);
        put_char(b, ',');
        put_int(b, places[p].district);
        put_char(b, ',');
        put_int(b, places[p].count);
        put_char(b, ',');
        put_int(b, (long long)e->us);
        put(b, ",\"", 2);
        put(b, e->source.text, (size_t)e->source.size);
        put_char(b, '/');
        put(b, e->transaction.text, (size_t)e->transaction.size);
        put(b, "\",", 2);
        put_optional(b, e->subdistrict);
        put_char(b, ',');
        put_optional(b, e->village);
        put_char(b, ',');
        put_optional(b, e->pincode);
        put_char(b, ']');
    }
    put(b, "]]", 2);
    return found;
}

/* Rule 3's monthly district of one month's places: the latest presence; ties on its time by
 * the most presence, then the smallest district (places are sorted by district). */
static const Place *monthly_district(const Place *places, Py_ssize_t count) {
    const Place *best = &places[0];
    for (Py_ssize_t p = 1; p < count; p++) {
        const Place *other = &places[p];
        if (other->latest->us > best->latest->us ||
            (other->latest->us == best->latest->us && other->count > best->count))
            best = other;
    }
    return best;
}

/* --- the stored form ------------------------------------------------------------------------ */

/* The last stored month (NULL for none) and the latest stored month with presence (NULL). */
static int stored_months(const char *tail, Py_ssize_t size, const char **last,
                         const char **present) {
    *last = *present = NULL;
    Py_ssize_t end = size;
    while (end > 0) {
        Py_ssize_t start = end;
        while (start > 0 && tail[start - 1] != '\n')
            start--;
        if (end - start < MONTH_BYTES + 1)
            return 0;
        if (*last == NULL)
            *last = tail + start;
        if (tail[start + MONTH_BYTES] == '1') {
            *present = tail + start;
            return 1;
        }
        end = start - 1;
    }
    return 1;
}

static int counted(const unsigned char *digests, Py_ssize_t count, const unsigned char *digest) {
    for (Py_ssize_t i = 0; i < count; i++)
        if (memcmp(digests + 8 * i, digest, 8) == 0)
            return 1;
    return 0;
}

/* A tuple of new references, each stolen (on failure too); NULL when any item is NULL. */
static PyObject *tuple_of(Py_ssize_t n, PyObject **items) {
    PyObject *tuple = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == NULL)
            goto failed;
    tuple = PyTuple_New(n);
    if (tuple == NULL)
        goto failed;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(tuple, i, items[i]);
    return tuple;
failed:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

/* merge_later's work, answered in its form, or in later_months' (later_form: the stored
 * digests and lines empty, no current district or re-baseline). */
static PyObject *merge_into(PyObject *const *args, int later_form) {
    if (merge.biometric == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    PyObject *stored_digests = args[0], *stored_tail = args[1], *collections = args[2];
    PyObject *current = args[3], *rebaseline = args[4];
    if (!PyBytes_Check(stored_digests) || !PyBytes_Check(stored_tail) ||
        !PyList_Check(collections)) {
        PyErr_SetString(PyExc_TypeError, "merge_later(bytes, bytes, list, ...)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(collections);
    long long current_state = 0, current_district = 0;
    Text last_rebaseline = {NULL, 0};
    if (n == 0 || n > MAX_COLLECTIONS || PyBytes_GET_SIZE(stored_digests) % 8 != 0)
        Py_RETURN_NONE;
    if (current != Py_None &&
        !(PyTuple_Check(current) && PyTuple_GET_SIZE(current) == 2 &&
          small_int(PyTuple_GET_ITEM(current, 0), &current_state) &&
          small_int(PyTuple_GET_ITEM(current, 1), &current_district)))
        Py_RETURN_NONE;
    if (rebaseline != Py_None && !plain_text(rebaseline, &last_rebaseline))
        Py_RETURN_NONE;
    const char *tail = PyBytes_AS_STRING(stored_tail), *last, *present;
    if (!stored_months(tail, PyBytes_GET_SIZE(stored_tail), &last, &present))
        Py_RETURN_NONE;
    const unsigned char *digests = (const unsigned char *)PyBytes_AS_STRING(stored_digests);
    Py_ssize_t stored_count = PyBytes_GET_SIZE(stored_digests) / 8;

    /* Most members bring one or two collections: their work space is on the stack. */
    Entry small_entries[SMALL], *small_order[SMALL], *small_scratch[SMALL];
    Place small_places[SMALL];
    unsigned char small_fresh[SMALL * 8];
    char small_lines[SMALL * 128];
    int on_stack = n <= SMALL;
    Entry *entries = on_stack ? small_entries : PyMem_Malloc((size_t)n * sizeof *entries);
    Entry **order = on_stack ? small_order : PyMem_Malloc((size_t)n * sizeof *order);
    Entry **scratch = on_stack ? small_scratch : PyMem_Malloc((size_t)n * sizeof *scratch);
    Place *places = on_stack ? small_places : PyMem_Malloc((size_t)n * sizeof *places);
    unsigned char *fresh = on_stack ? small_fresh : PyMem_Malloc((size_t)n * 8);
    Buffer lines = {small_lines, 0, sizeof small_lines, 0, 1};
    PyObject *result = NULL;
    if (entries == NULL || order == NULL || scratch == NULL || places == NULL || fresh == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t kept = 0;
    PyObject *first = NULL; /* the earliest month of them all, duplicates too */
    for (Py_ssize_t i = 0; i < n; i++) {
        Entry *e = &entries[kept];
        if (!read_entry(PyList_GET_ITEM(collections, i), e) ||
            (last != NULL && memcmp(e->month.text, last, MONTH_BYTES) <= 0)) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        if (first == NULL || memcmp(e->month.text, PyUnicode_DATA(first), MONTH_BYTES) < 0)
            first = e->month_object;
        if (counted(digests, stored_count, e->digest) || counted(fresh, kept, e->digest))
            continue; /* counted before: MemberHistory.add returns False */
        memcpy(fresh + 8 * kept, e->digest, 8);
        order[kept] = e;
        kept++;
    }
    int may_move = 0, last_present = 0, there_seen = 0, there_varied = 0;
    long long there_state = 0, there_district = 0;
    qsort(order, (size_t)kept, sizeof *order, by_month);
    for (Py_ssize_t start = 0; start < kept;) {
        Py_ssize_t end = start + 1;
        while (end < kept && memcmp(order[end]->month.text, order[start]->month.text,
                                    MONTH_BYTES) == 0)
            end++;
        if (start > 0)
            put_char(&lines, '\n');
        Py_ssize_t found = put_month(&lines, order + start, end - start, places, scratch);
        last_present = found > 0;
        const Place *there = found ? monthly_district(places, found) : NULL;
        if (there != NULL) {
            if (!there_seen) {
                there_seen = 1;
                there_state = there->state;
                there_district = there->district;
            } else if (there->state != there_state || there->district != there_district) {
                there_varied = 1;
            }
        }
        if (there != NULL && current != Py_None && !may_move) {
            /* may_move(): a month after every observed month (its district before was None)
             * that places the worker where they are, with no re-baseline since, changes
             * nothing; any other new presence may. */
            int here = there->state == current_state && there->district == current_district;
            int confirmed =
                rebaseline == Py_None ||
                (present != NULL &&
                 compare_text(last_rebaseline, (Text){present, MONTH_BYTES}) <= 0) ||
                (present == NULL && last_rebaseline.size == 0);
            if (!here || !confirmed)
                may_move = 1;
        }
        start = end;
    }
    if (lines.failed) {
        PyErr_NoMemory();
        goto done;
    }
    if (kept == 0) { /* nothing counted: the stored form as given, "" for the last month */
        PyObject *zero = PyLong_FromSsize_t(0), *no_month = PyUnicode_FromStringAndSize("", 0);
        if (later_form)
            result = tuple_of(6, (PyObject *[]){Py_NewRef(stored_digests), Py_NewRef(stored_tail),
                                                zero, Py_NewRef(first), no_month,
                                                Py_NewRef(Py_None)});
        else
            result = tuple_of(7, (PyObject *[]){Py_NewRef(stored_digests), Py_NewRef(stored_tail),
                                                zero, Py_NewRef(Py_False), no_month,
                                                Py_NewRef(Py_False), Py_NewRef(Py_None)});
        goto done;
    }
    if (later_form && there_varied) { /* not one monthly district: left to the read */
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* the new months' monthly district: None (no presence), False (not one district) */
    PyObject *district =
        !there_seen    ? Py_NewRef(Py_None)
        : there_varied ? Py_NewRef(Py_False)
                       : tuple_of(2, (PyObject *[]){PyLong_FromLongLong(there_state),
                                                    PyLong_FromLongLong(there_district)});
    if (district == NULL)
        goto done;
    /* the stored form after the merge: digests and month lines appended */
    Py_ssize_t tail_size = PyBytes_GET_SIZE(stored_tail);
    Py_ssize_t separator = tail_size > 0;
    PyObject *new_digests = PyBytes_FromStringAndSize(NULL, (stored_count + kept) * 8);
    PyObject *new_tail =
        PyBytes_FromStringAndSize(NULL, tail_size + separator + (Py_ssize_t)lines.size);
    if (new_digests != NULL && new_tail != NULL) {
        char *d = PyBytes_AS_STRING(new_digests), *t = PyBytes_AS_STRING(new_tail);
        memcpy(d, digests, (size_t)stored_count * 8);
        memcpy(d + stored_count * 8, fresh, (size_t)kept * 8);
        memcpy(t, tail, (size_t)tail_size);
        if (separator)
            t[tail_size] = '\n';
        memcpy(t + tail_size + separator, lines.data, lines.size);
        PyObject *newest = Py_NewRef(order[kept - 1]->month_object);
        if (later_form) /* (digests, lines, counted, first month, last month, district) */
            result = tuple_of(6, (PyObject *[]){new_digests, new_tail, PyLong_FromSsize_t(kept),
                                                Py_NewRef(first), newest, district});
        else
            result = tuple_of(7, (PyObject *[]){new_digests, new_tail, PyLong_FromSsize_t(kept),
                                                Py_NewRef(may_move ? Py_True : Py_False), newest,
                                                Py_NewRef(last_present ? Py_True : Py_False),
                                                district});
        new_digests = new_tail = district = NULL;
    }
    Py_XDECREF(district);
    Py_XDECREF(new_digests);
    Py_XDECREF(new_tail);
done:
    if (!on_stack) {
        PyMem_Free(entries);
        PyMem_Free(order);
        PyMem_Free(scratch);
        PyMem_Free(places);
        PyMem_Free(fresh);
    }
    if (!lines.borrowed)
        free(lines.data);
    return result;
}

/* merge_later(digests, tail, collections, current, last_rebaseline)
 *   -> (digests, tail, transactions counted, may move, last month, last month has presence)
 *      | None
 * The digests and the month lines (tail) after the merge; when nothing was counted, the ones
 * given, and "" for the last month. */
static PyObject *merge_later(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "merge_later takes 5 arguments");
        return NULL;
    }
    return merge_into(args, 0);
}

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *biometric, *others, *collection_type, *location_type;
    if (!PyArg_ParseTuple(args, "O!O!O!O!:configure", &PyTuple_Type, &biometric, &PyTuple_Type,
                          &others, &PyType_Type, &collection_type, &PyType_Type,
                          &location_type))
        return NULL;
    for (int i = 0; i < 12; i++) {
        if (merge.names[i] == NULL) {
            merge.names[i] = PyUnicode_InternFromString(attribute_names[i]);
            if (merge.names[i] == NULL)
                return NULL;
        }
    }
    for (int i = 0; i < 12; i++)
        merge.offsets[i] = slot_offset(i < A_STATE ? collection_type : location_type,
                                       merge.names[i]);
    Py_XSETREF(merge.biometric, Py_NewRef(biometric));
    Py_XSETREF(merge.others, Py_NewRef(others));
    Py_XSETREF(merge.collection_type, Py_NewRef(collection_type));
    Py_XSETREF(merge.location_type, Py_NewRef(location_type));
    Py_RETURN_NONE;
}

/* later_months(collections) -> (digests, lines, counted, first_month, last_month, district)
 *      | None
 * merge_later() of one member's collections into an empty history, with the earliest month of
 * them all (duplicates too: merge_later checks every collection's month against the stored
 * ones). None where merge_later declines them or their months with presence are not all one
 * monthly district. See history.LaterMonths. */
static PyObject *later_months(PyObject *module, PyObject *collections) {
    static PyObject *empty = NULL;
    if (empty == NULL && (empty = PyBytes_FromStringAndSize(NULL, 0)) == NULL)
        return NULL;
    PyObject *args[5] = {empty, empty, collections, Py_None, Py_None};
    return merge_into(args, 1);
}

/* sha_extensions(enabled): use the SHA extensions or the portable SHA-256 (tests run both);
 * None leaves the choice made at import. Returns whether the extensions are in use: never on a
 * processor without them. */
static PyObject *sha_extensions(PyObject *self, PyObject *args) {
    PyObject *enabled = Py_None;
    if (!PyArg_ParseTuple(args, "|O:sha_extensions", &enabled))
        return NULL;
    if (enabled != Py_None) {
        int wanted = PyObject_IsTrue(enabled);
        if (wanted < 0)
            return NULL;
        choose_sha256_block(wanted);
    }
    return PyBool_FromLong(sha256_block != sha256_block_portable);
}

static PyMethodDef methods[] = {
    {"merge_later", (PyCFunction)(void (*)(void))merge_later, METH_FASTCALL,
     "merge_later(digests, tail, collections, current, last_rebaseline)"
     " -> (digests, tail, counted, may_move, last_month, last_present, district) | None"},
    {"later_months", later_months, METH_O,
     "later_months(collections)"
     " -> (digests, lines, counted, first_month, last_month, district) | None"},
    {"configure", configure, METH_VARARGS,
     "configure(biometric, others, collection_type, location_type): the AuthMode members by"
     " whether they prove presence, and the RationCollection and Location classes."},
    {"sha_extensions", sha_extensions, METH_VARARGS,
     "sha_extensions(enabled=None) -> bool: whether transaction keys are hashed with the"
     " processor's SHA extensions (chosen at import; False switches to the portable code)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "eshram_locator.domain._history_merge",
    "The member histories' fast merge (see MemberHistory.merge_later).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__history_merge(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    choose_sha256_block(1);
    return PyModule_Create(&module_def);
}
