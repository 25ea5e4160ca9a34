/* A limit_req zone's check of a key whose entry is where it was last time, without a
 * Python object: the zone's lock, the entry's generation and LRU place, its leaky
 * bucket, all read and written in the zone's shared map (table.py's layout) in one call.
 *
 * The compiled zones.py calls it for a remembered key (the address alone); anything
 * else (the lock busy, the entry gone from its slot) answers a negative number and the
 * Python path in zones.py does the work, as it does without this module (pure Python,
 * or no C compiler). The lock is the table's own semaphore (its handle, a sem_t *),
 * taken without waiting, with the holder's PID written where table.py keeps it, so that
 * both paths exclude each other and a waiter can take over from a dead holder. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* table.py's layout: the header's int32s and int64 counters, an entry's fields */
#define HEAD_INT 0
#define TAIL_INT 1
#define HOLDER_INT 4
#define COUNTERS_AT 24
#define REJECTED 0
#define SLOT_BYTES 64
#define A_AT 16
#define B_AT 24
#define NEWER_AT 40
#define OLDER_AT 44
#define GENERATION_AT 56
#define NONE (-1)

/* answers besides an excess (>= 0) */
#define BUSY (-1)  /* the lock is taken: wait for it (Python) */
#define MOVED (-2) /* the entry is no longer in the slot: look it up (Python) */

/* this process's PID, kept current across fork (getpid is a system call) */
static int32_t this_pid;

static void
forked(void)
{
    this_pid = (int32_t)getpid();
}

typedef struct {
    PyObject_HEAD
    Py_buffer map; /* the zone's map, held (an export) until close() */
    int open;
    sem_t *sem;
    char *header;
    char *slots;
    int64_t nslots;
    int64_t rate; /* thousandths of a request per second */
} BucketCheck;

static inline int32_t
get32(char *at)
{
    int32_t value;
    memcpy(&value, at, 4);
    return value;
}

static inline void
set32(char *at, int32_t value)
{
    memcpy(at, &value, 4);
}

static inline int64_t
get64(char *at)
{
    int64_t value;
    memcpy(&value, at, 8);
    return value;
}

static inline void
set64(char *at, int64_t value)
{
    memcpy(at, &value, 8);
}

/* table.py's _touch: the entry in ``slot`` becomes the most recent */
static void
touch(BucketCheck *self, int32_t slot)
{
    char *header = self->header;
    char *entry = self->slots + (int64_t)slot * SLOT_BYTES;
    int32_t head = get32(header + 4 * HEAD_INT);
    if (head == slot) {
        return;
    }
    int32_t prev = get32(entry + NEWER_AT), next = get32(entry + OLDER_AT);
    int32_t tail = get32(header + 4 * TAIL_INT);
    /* out of the list */
    if (prev != NONE) {
        set32(self->slots + (int64_t)prev * SLOT_BYTES + OLDER_AT, next);
    }
    else {
        head = next;
    }
    if (next != NONE) {
        set32(self->slots + (int64_t)next * SLOT_BYTES + NEWER_AT, prev);
    }
    else {
        tail = prev;
    }
    /* at its front */
    set32(entry + NEWER_AT, NONE);
    set32(entry + OLDER_AT, head);
    if (head != NONE) {
        set32(self->slots + (int64_t)head * SLOT_BYTES + NEWER_AT, slot);
    }
    else {
        tail = slot;
    }
    set32(header + 4 * HEAD_INT, slot);
    set32(header + 4 * TAIL_INT, tail);
}

/* check(slot, generation, now, burst) -> the excess with the request counted, or over
 * burst the excess it would have made (refused, not counted); BUSY or MOVED. ``now`` in
 * ms on the monotonic clock, or -1: read it here */
static PyObject *
BucketCheck_check(BucketCheck *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "check() takes 4 arguments");
        return NULL;
    }
    int64_t slot = PyLong_AsLongLong(args[0]);
    int64_t generation = PyLong_AsLongLong(args[1]);
    int64_t now = PyLong_AsLongLong(args[2]);
    int64_t burst = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!self->open) {
        PyErr_SetString(PyExc_ValueError, "the zone's map is closed");
        return NULL;
    }
    if (now < 0) {
        /* the clock's now (CLOCK_MONOTONIC, as zones.now_ms): a vDSO read, cheaper here
         * than the request's start read through its exchange */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    if (slot < 0 || slot >= self->nslots) {
        return PyLong_FromLong(MOVED);
    }
    if (sem_trywait(self->sem) != 0) {
        return PyLong_FromLong(BUSY); /* (EAGAIN, or EINTR: the Python path waits) */
    }
    set32(self->header + 4 * HOLDER_INT, this_pid);
    char *entry = self->slots + slot * SLOT_BYTES;
    int64_t excess;
    if (get32(entry + GENERATION_AT) != generation) {
        excess = MOVED;
    }
    else {
        if (get32(entry + NEWER_AT) != NONE) {
            touch(self, (int32_t)slot);
        }
        /* zones.py's LimitReqState.check, the same arithmetic */
        int64_t last = get64(entry + B_AT);
        int64_t ms = now - last;
        excess = get64(entry + A_AT);
        if (ms < 0) {
            ms = ms < -60000 ? 1 : 0; /* the clock went back (a lot: as 1 ms) */
        }
        if (ms > INT64_MAX / self->rate) {
            excess = 0; /* idle for ages: all leaked (and rate * ms would overflow) */
        }
        else {
            if (ms) {
                /* Python's floor division: rate * ms >= 0 here */
                excess -= self->rate * ms / 1000;
            }
            excess += 1000;
            if (excess < 0) {
                excess = 0;
            }
        }
        if (excess > burst) {
            char *counter = self->header + COUNTERS_AT + 8 * REJECTED;
            set64(counter, get64(counter) + 1);
        }
        else {
            set64(entry + A_AT, excess);
            if (ms) {
                set64(entry + B_AT, now);
            }
        }
    }
    sem_post(self->sem);
    return PyLong_FromLongLong(excess);
}

static PyObject *
BucketCheck_close(BucketCheck *self, PyObject *unused)
{
    if (self->open) {
        self->open = 0;
        PyBuffer_Release(&self->map);
    }
    Py_RETURN_NONE;
}

static int
BucketCheck_init(BucketCheck *self, PyObject *args, PyObject *kwds)
{
    PyObject *map;
    unsigned long long sem;
    Py_ssize_t slot_base, slots;
    long long rate;
    static char *names[] = {"map", "sem", "slot_base", "slots", "rate", NULL};
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "OKnnL", names, &map, &sem, &slot_base, &slots, &rate)) {
        return -1;
    }
    if (self->open) {
        PyErr_SetString(PyExc_ValueError, "already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(map, &self->map, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    if (slot_base < COUNTERS_AT + 8 || slots < 1 ||
        slot_base + slots * SLOT_BYTES > self->map.len || rate < 1) {
        PyBuffer_Release(&self->map);
        PyErr_SetString(PyExc_ValueError, "a map too small for its slots, or no rate");
        return -1;
    }
    self->open = 1;
    self->sem = (sem_t *)(uintptr_t)sem;
    self->header = (char *)self->map.buf;
    self->slots = self->header + slot_base;
    self->nslots = slots;
    self->rate = rate;
    return 0;
}

static void
BucketCheck_dealloc(BucketCheck *self)
{
    if (self->open) {
        PyBuffer_Release(&self->map);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef BucketCheck_methods[] = {
    {"check", (PyCFunction)(void (*)(void))BucketCheck_check, METH_FASTCALL,
     "check(slot, generation, now, burst): the excess, or -1 (lock busy), -2 (moved)"},
    {"close", (PyCFunction)BucketCheck_close, METH_NOARGS, "Release the zone's map."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BucketCheckType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gantry.front.limits._bucket.BucketCheck",
    .tp_basicsize = sizeof(BucketCheck),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A limit_req zone's check of a remembered entry, in its shared map.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BucketCheck_init,
    .tp_dealloc = (destructor)BucketCheck_dealloc,
    .tp_methods = BucketCheck_methods,
};

static struct PyModuleDef bucket_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gantry.front.limits._bucket",
    .m_doc = "A limit_req zone's check of a remembered entry, in C.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__bucket(void)
{
    if (PyType_Ready(&BucketCheckType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&bucket_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&BucketCheckType);
    if (PyModule_AddObject(module, "BucketCheck", (PyObject *)&BucketCheckType) < 0) {
        Py_DECREF(&BucketCheckType);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "BUSY", BUSY) < 0 ||
        PyModule_AddIntConstant(module, "MOVED", MOVED) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    this_pid = (int32_t)getpid();
    pthread_atfork(NULL, NULL, forked);
    return module;
}
