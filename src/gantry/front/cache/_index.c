/* A cache zone's shared tables read and written without a Python object per number:
 * the pack index's buckets (packs.py's layout), the small maps of its change marks
 * (store.py's Generation, invalidations.py), and an entry's pack record (store.py's
 * file format) made in one allocation.
 *
 * packs.py, store.py and invalidations.py do the same work in Python without this
 * module (pure Python, a stale build, no C compiler); tests/test_cache_index_helper.py
 * holds both to the same answers. Each number of a map is read and written as struct's
 * native "=" codes do, unaligned and in the machine's order. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* packs.py's index: an 8-byte head, then slots of (tag, pack, offset: u64; length, last
 * use: u32); a key's bucket is WAYS slots */
#define INDEX_HEAD 8
#define SLOT_BYTES 32
#define WAYS 4
#define PACK_AT 8
#define OFFSET_AT 16
#define LENGTH_AT 24
#define USED_AT 28

/* store.py's record: prefix ">3sBI" (magic, version, head length), head, body,
 * trailer ">QII" (body length, body CRC-32, head CRC-32) */
#define PREFIX_BYTES 8
#define TRAILER_BYTES 16
static const char MAGIC[3] = {'G', 'C', 'E'};
#define VERSION 2

static inline uint64_t
get64(const char *at)
{
    uint64_t value;
    memcpy(&value, at, 8);
    return value;
}

static inline uint32_t
get32(const char *at)
{
    uint32_t value;
    memcpy(&value, at, 4);
    return value;
}

static inline void
put_be32(char *at, uint32_t value)
{
    at[0] = (char)(value >> 24);
    at[1] = (char)(value >> 16);
    at[2] = (char)(value >> 8);
    at[3] = (char)value;
}

/* CRC-32 as zlib's crc32 (IEEE 802.3, reflected), eight bytes a step by eight tables
 * made at import (a byte a step took half a microsecond of a miss for a head) */
static uint32_t crc_tables[8][256];

static void
make_crc_tables(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        crc_tables[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        for (int t = 1; t < 8; t++) {
            uint32_t c = crc_tables[t - 1][n];
            crc_tables[t][n] = crc_tables[0][c & 0xFF] ^ (c >> 8);
        }
    }
}

static uint32_t
crc32_of(const unsigned char *data, Py_ssize_t length)
{
    uint32_t c = 0xFFFFFFFFu;
    while (length >= 8) {
        uint32_t low = c ^ ((uint32_t)data[0] | (uint32_t)data[1] << 8 |
                            (uint32_t)data[2] << 16 | (uint32_t)data[3] << 24);
        c = crc_tables[7][low & 0xFF] ^ crc_tables[6][(low >> 8) & 0xFF] ^
            crc_tables[5][(low >> 16) & 0xFF] ^ crc_tables[4][low >> 24] ^
            crc_tables[3][data[4]] ^ crc_tables[2][data[5]] ^ crc_tables[1][data[6]] ^
            crc_tables[0][data[7]];
        data += 8;
        length -= 8;
    }
    while (length-- > 0) {
        c = crc_tables[0][(c ^ *data++) & 0xFF] ^ (c >> 8);
    }
    return c ^ 0xFFFFFFFFu;
}

/* A mapped table held (a buffer export) until close() */
typedef struct {
    PyObject_HEAD
    Py_buffer map;
    int open;
    Py_ssize_t buckets; /* IndexView: the index's buckets */
} MapView;

static int
view_open(MapView *self, PyObject *map, Py_ssize_t least)
{
    if (self->open) {
        PyErr_SetString(PyExc_ValueError, "already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(map, &self->map, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    if (self->map.len < least) {
        PyBuffer_Release(&self->map);
        PyErr_SetString(PyExc_ValueError, "a map too small for its table");
        return -1;
    }
    self->open = 1;
    return 0;
}

static int
view_closed(MapView *self)
{
    if (!self->open) {
        PyErr_SetString(PyExc_ValueError, "the map's view is closed");
        return 1;
    }
    return 0;
}

static PyObject *
MapView_close(MapView *self, PyObject *unused)
{
    if (self->open) {
        self->open = 0;
        PyBuffer_Release(&self->map);
    }
    Py_RETURN_NONE;
}

static void
MapView_dealloc(MapView *self)
{
    if (self->open) {
        PyBuffer_Release(&self->map);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* IndexView(map, slots) */
static int
IndexView_init(MapView *self, PyObject *args, PyObject *kwds)
{
    PyObject *map;
    Py_ssize_t slots;
    static char *names[] = {"map", "slots", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "On", names, &map, &slots)) {
        return -1;
    }
    if (slots < WAYS || slots % WAYS) {
        PyErr_SetString(PyExc_ValueError, "slots: a positive multiple of the ways");
        return -1;
    }
    if (view_open(self, map, INDEX_HEAD + slots * SLOT_BYTES) < 0) {
        return -1;
    }
    self->buckets = slots / WAYS;
    return 0;
}

static int
tag_of(PyObject *arg, uint64_t *tag)
{
    unsigned long long value = PyLong_AsUnsignedLongLong(arg);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *tag = (uint64_t)value;
    return 0;
}

/* find(tag) -> (slot, pack, offset, length), or None: packs.py's PackIndex.find */
static PyObject *
IndexView_find(MapView *self, PyObject *arg)
{
    uint64_t tag;
    if (view_closed(self) || tag_of(arg, &tag) < 0) {
        return NULL;
    }
    Py_ssize_t base = (Py_ssize_t)(tag % (uint64_t)self->buckets) * WAYS;
    const char *at = (const char *)self->map.buf + INDEX_HEAD + base * SLOT_BYTES;
    for (int way = 0; way < WAYS; way++, at += SLOT_BYTES) {
        if (get64(at) == tag) {
            return Py_BuildValue("(nKKk)", base + way, (unsigned long long)get64(at + PACK_AT),
                                 (unsigned long long)get64(at + OFFSET_AT),
                                 (unsigned long)get32(at + LENGTH_AT));
        }
    }
    Py_RETURN_NONE;
}

/* put(tag, pack, offset, length, now) -> (kind, old length): packs.py's PackIndex.put */
static PyObject *
IndexView_put(MapView *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t tag;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "put(tag, pack, offset, length, now)");
        return NULL;
    }
    if (view_closed(self) || tag_of(args[0], &tag) < 0) {
        return NULL;
    }
    unsigned long long pack = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long offset = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long length = PyLong_AsUnsignedLong(args[3]);
    double now = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (length > 0xFFFFFFFFul || !(now >= 0.0 && now < 4294967296.0)) {
        PyErr_SetString(PyExc_OverflowError, "a length or time past the slot's 32 bits");
        return NULL;
    }
    Py_ssize_t base = (Py_ssize_t)(tag % (uint64_t)self->buckets) * WAYS;
    char *bucket = (char *)self->map.buf + INDEX_HEAD + base * SLOT_BYTES;
    int way = -1, kind = 0;
    uint32_t old_length = 0;
    for (int w = 0; w < WAYS; w++) {
        if (get64(bucket + w * SLOT_BYTES) == tag) {
            way = w;
            break;
        }
    }
    if (way >= 0) { /* the same key's older version */
        kind = 1;
        old_length = get32(bucket + way * SLOT_BYTES + LENGTH_AT);
    }
    else {
        for (int w = 0; w < WAYS; w++) {
            if (get64(bucket + w * SLOT_BYTES) == 0) {
                way = w;
                break;
            }
        }
        if (way < 0) { /* the least recently used, the first of equals */
            uint32_t oldest = get32(bucket + USED_AT);
            way = 0;
            for (int w = 1; w < WAYS; w++) {
                uint32_t used = get32(bucket + w * SLOT_BYTES + USED_AT);
                if (used < oldest) {
                    way = w;
                    oldest = used;
                }
            }
            kind = 2;
            old_length = get32(bucket + way * SLOT_BYTES + LENGTH_AT);
        }
    }
    char *slot = bucket + way * SLOT_BYTES;
    uint64_t pack64 = pack, offset64 = offset;
    uint32_t length32 = (uint32_t)length, used32 = (uint32_t)now;
    memcpy(slot, &tag, 8);
    memcpy(slot + PACK_AT, &pack64, 8);
    memcpy(slot + OFFSET_AT, &offset64, 8);
    memcpy(slot + LENGTH_AT, &length32, 4);
    memcpy(slot + USED_AT, &used32, 4);
    return Py_BuildValue("(ik)", kind, (unsigned long)old_length);
}

/* Words(map): the u64 and f64 at a byte offset of a small map (change marks, times) */
static int
Words_init(MapView *self, PyObject *args, PyObject *kwds)
{
    PyObject *map;
    static char *names[] = {"map", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", names, &map)) {
        return -1;
    }
    self->buckets = 0;
    return view_open(self, map, 8);
}

static int
word_at(MapView *self, PyObject *arg, Py_ssize_t *at)
{
    if (view_closed(self)) {
        return -1;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(arg);
    if (offset == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (offset < 0 || offset > self->map.len - 8) {
        PyErr_SetString(PyExc_IndexError, "past the map");
        return -1;
    }
    *at = offset;
    return 0;
}

static PyObject *
Words_u64(MapView *self, PyObject *arg)
{
    Py_ssize_t at;
    if (word_at(self, arg, &at) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(get64((const char *)self->map.buf + at));
}

static PyObject *
Words_f64(MapView *self, PyObject *arg)
{
    Py_ssize_t at;
    if (word_at(self, arg, &at) < 0) {
        return NULL;
    }
    double value;
    memcpy(&value, (const char *)self->map.buf + at, 8);
    return PyFloat_FromDouble(value);
}

/* the record of ``head`` and ``body`` written at ``at`` (its size: see record_args) */
static void
write_record(char *at, PyObject *head, PyObject *body, unsigned long long length,
             unsigned long crc)
{
    Py_ssize_t head_size = PyBytes_GET_SIZE(head), body_size = PyBytes_GET_SIZE(body);
    memcpy(at, MAGIC, 3);
    at[3] = VERSION;
    put_be32(at + 4, (uint32_t)head_size);
    at += PREFIX_BYTES;
    memcpy(at, PyBytes_AS_STRING(head), head_size);
    at += head_size;
    memcpy(at, PyBytes_AS_STRING(body), body_size);
    at += body_size;
    put_be32(at, (uint32_t)(length >> 32));
    put_be32(at + 4, (uint32_t)length);
    put_be32(at + 8, (uint32_t)crc);
    put_be32(at + 12, crc32_of((const unsigned char *)PyBytes_AS_STRING(head), head_size));
}

/* record's arguments: head, body, length, crc; the record's size, or -1 with an
 * exception set */
static Py_ssize_t
record_args(PyObject *const *args, unsigned long long *length, unsigned long *crc)
{
    if (!PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "a record's head and body are bytes");
        return -1;
    }
    *length = PyLong_AsUnsignedLongLong(args[2]);
    *crc = PyLong_AsUnsignedLong(args[3]);
    if (PyErr_Occurred()) {
        return -1;
    }
    Py_ssize_t head_size = PyBytes_GET_SIZE(args[0]);
    if (head_size > 0xFFFFFFFFll || *crc > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_OverflowError, "a head or checksum past 32 bits");
        return -1;
    }
    return PREFIX_BYTES + head_size + PyBytes_GET_SIZE(args[1]) + TRAILER_BYTES;
}

/* record(head, body, length, crc) -> bytes: store.py's _file_bytes of a one-piece body */
static PyObject *
record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long length;
    unsigned long crc;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "record(head, body, length, crc)");
        return NULL;
    }
    Py_ssize_t size = record_args(args, &length, &crc);
    if (size < 0) {
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out != NULL) {
        write_record(PyBytes_AS_STRING(out), args[0], args[1], length, crc);
    }
    return out;
}

static PyMethodDef IndexView_methods[] = {
    {"find", (PyCFunction)IndexView_find, METH_O,
     "find(tag): (slot, pack, offset, length) of the tag's entry, or None"},
    {"put", (PyCFunction)(void (*)(void))IndexView_put, METH_FASTCALL,
     "put(tag, pack, offset, length, now): (kind, old length) of what it displaced"},
    {"close", (PyCFunction)MapView_close, METH_NOARGS, "Release the map."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Words_methods[] = {
    {"u64", (PyCFunction)Words_u64, METH_O, "u64(offset): the unsigned 64-bit number there"},
    {"f64", (PyCFunction)Words_f64, METH_O, "f64(offset): the double there"},
    {"close", (PyCFunction)MapView_close, METH_NOARGS, "Release the map."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject IndexViewType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gantry.front.cache._index.IndexView",
    .tp_basicsize = sizeof(MapView),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A zone's pack index (its map), found in and written to in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)IndexView_init,
    .tp_dealloc = (destructor)MapView_dealloc,
    .tp_methods = IndexView_methods,
};

static PyTypeObject WordsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gantry.front.cache._index.Words",
    .tp_basicsize = sizeof(MapView),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The 64-bit numbers of a small shared map, read in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Words_init,
    .tp_dealloc = (destructor)MapView_dealloc,
    .tp_methods = Words_methods,
};

static PyMethodDef module_methods[] = {
    {"record", (PyCFunction)(void (*)(void))record, METH_FASTCALL,
     "record(head, body, length, crc): an entry's record (its file's bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef index_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gantry.front.cache._index",
    .m_doc = "A cache zone's shared tables and records, in C.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__index(void)
{
    make_crc_tables();
    PyObject *module = PyModule_Create(&index_module);
    if (module == NULL) {
        return NULL;
    }
    /* (each made ready, and named in the module by its type's name) */
    if (PyModule_AddType(module, &IndexViewType) < 0 ||
        PyModule_AddType(module, &WordsType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
