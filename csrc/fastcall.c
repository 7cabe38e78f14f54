/*
 * frankenpy._fastcall: the common case of Runtime.execute_file(path) / execute_code(code) with
 * no Python frame: a CPython C-API extension (cffi calls cost a Python layer around them).
 *
 * - fast_method wraps the Python method in the class body.  Its vectorcall takes the C path for
 *   exactly one positional exact str (an absolute path for execute_file), no keyword argument,
 *   and the runtime running; anything else, and every case where nothing ran (no idle PHP
 *   thread, no such file, pool closed, arguments not prepared yet), calls the Python method,
 *   which decides.  So every rule stays in Python; C only repeats what Python prepared.
 * - Python prepares per script a Prepared (the ScriptArgs and an fp_fast_call whose inputs
 *   Runtime._fill set) and, while the runtime runs, Runtime._fast (a Running: the ThreadPool, its
 *   fp_pool and the Prepared cache).  C copies the inputs into this thread's reused
 *   fp_fast_call, runs fp_fast_execute_for_python() with the GIL released once (it hands the
 *   GIL over between Python callers, see serve.h), and builds the Result.
 *   A call with something rare to look at (diagnostics, STDERR, time limit, given up) already
 *   ran: its Result comes from Python (Runtime._rare_result), never from a second run.
 * - fp_fast_execute_for_python lives in frankenpy._native (serve.c has process-wide state:
 *   never compiled twice); Python hands its address over once (setup()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

typedef int (*fast_execute_fn)(fp_pool *pool, int member, fp_fast_call *call);
typedef void (*call_clear_fn)(fp_fast_call *call);

enum { KIND_FILE, KIND_CODE };

static fast_execute_fn fast_execute;
static call_clear_fn call_clear;
static PyObject *rare_result;  /* Python: (ThreadPool, address of the fp_fast_call) -> Result */
static PyObject *str_fast;     /* "_fast": Runtime's Running while it runs, else None */
static PyObject *empty_bytes, *empty_tuple;

/* Counters (stats()): executions run by the C path (under the GIL), and per-thread calls alive
 * (their destructor runs without the GIL, at thread exit). */
static uint64_t fast_calls;
static atomic_long live_calls;

/* ---- Result, built as frankenpy.execution.new_result did: its slots set, no __init__ ------- */

#define RESULT_FIELDS 7
static const char *const result_fields[RESULT_FIELDS] = {
    "exit_status", "output", "diagnostics", "timed_out", "duration", "time_limit", "stderr",
};
static PyTypeObject *result_type;
static Py_ssize_t result_offsets[RESULT_FIELDS];

/* A Result of `fields` (in field order; steals the references, also on failure). */
static PyObject *result_from(PyObject *fields[RESULT_FIELDS])
{
    PyObject *result = NULL;
    for (int i = 0; i < RESULT_FIELDS; i++) {
        if (fields[i] == NULL) {
            goto done;
        }
    }
    result = result_type->tp_alloc(result_type, 0);
    if (result != NULL) {
        for (int i = 0; i < RESULT_FIELDS; i++) {
            *(PyObject **)((char *)result + result_offsets[i]) = fields[i];
        }
        return result;
    }
done:
    for (int i = 0; i < RESULT_FIELDS; i++) {
        Py_XDECREF(fields[i]);
    }
    return NULL;
}

static PyObject *set_result_type(PyObject *module, PyObject *type)
{
    (void)module;
    if (!PyType_Check(type)) {
        return PyErr_Format(PyExc_TypeError, "a class is needed, not %R", type);
    }
    /* The slots must be exactly the fields, in order: a new field would stay unset. */
    PyObject *slots = PyObject_GetAttrString(type, "__slots__");
    if (slots == NULL) {
        return NULL;
    }
    int same = PyTuple_Check(slots) && PyTuple_GET_SIZE(slots) == RESULT_FIELDS;
    for (int i = 0; same && i < RESULT_FIELDS; i++) {
        PyObject *name = PyTuple_GET_ITEM(slots, i);
        same = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, result_fields[i]) == 0;
    }
    Py_DECREF(slots);
    if (!same) {
        return PyErr_Format(PyExc_TypeError, "%R.__slots__ must be the fields of a Result", type);
    }
    PyTypeObject *t = (PyTypeObject *)type;
    Py_ssize_t offsets[RESULT_FIELDS];
    for (int i = 0; i < RESULT_FIELDS; i++) {
        PyObject *descr = PyDict_GetItemString(t->tp_dict, result_fields[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
            return PyErr_Format(PyExc_TypeError, "%R.%s is not a slot", type, result_fields[i]);
        }
        offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    memcpy(result_offsets, offsets, sizeof offsets);
    Py_XSETREF(result_type, (PyTypeObject *)Py_NewRef(type));
    Py_RETURN_NONE;
}

static PyObject *new_result(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (result_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_result_type() was not called");
        return NULL;
    }
    if (nargs != RESULT_FIELDS) {
        return PyErr_Format(PyExc_TypeError, "new_result() takes %d arguments (%zd given)",
                            RESULT_FIELDS, nargs);
    }
    PyObject *fields[RESULT_FIELDS];
    for (int i = 0; i < RESULT_FIELDS; i++) {
        fields[i] = Py_NewRef(args[i]);
    }
    return result_from(fields);
}

/* The Result of a call with nothing rare to look at (as Runtime._execute_fast builds it). */
static PyObject *common_result(const fp_fast_call *call)
{
    PyObject *fields[RESULT_FIELDS] = {
        PyLong_FromLong(call->exit_status),
        call->output_len ? PyBytes_FromStringAndSize(call->output, (Py_ssize_t)call->output_len)
                         : Py_NewRef(empty_bytes),
        Py_NewRef(empty_tuple),
        Py_NewRef(Py_False),
        PyFloat_FromDouble((double)call->duration_ns / 1e9),
        Py_NewRef(Py_None),
        Py_NewRef(empty_bytes),
    };
    return result_from(fields);
}

/* ---- Prepared, Running and fast_method: two references, then C data ------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *ref[2];
} Holder;

static PyObject *holder_new(PyTypeObject *type, PyObject *a, PyObject *b)
{
    Holder *self = (Holder *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->ref[0] = Py_XNewRef(a);
        self->ref[1] = Py_XNewRef(b);
    }
    return (PyObject *)self;
}

static int holder_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(((Holder *)self)->ref[0]);
    Py_VISIT(((Holder *)self)->ref[1]);
    return 0;
}

static int holder_clear(PyObject *self)
{
    Py_CLEAR(((Holder *)self)->ref[0]);
    Py_CLEAR(((Holder *)self)->ref[1]);
    return 0;
}

static void holder_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    holder_clear(self);
    Py_TYPE(self)->tp_free(self);
}

/* What the three types share (their flags have Py_TPFLAGS_HAVE_GC). */
#define HOLDER_TYPE(name, c_type, new_fn)                                                     \
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "frankenpy._fastcall." name,                     \
    .tp_basicsize = sizeof(c_type), .tp_new = new_fn, .tp_traverse = holder_traverse,         \
    .tp_clear = holder_clear, .tp_dealloc = holder_dealloc

static int check_address(unsigned long long address, const char *what)
{
    if (address == 0) {
        PyErr_Format(PyExc_ValueError, "%s: address is NULL", what);
        return -1;
    }
    return 0;
}

/* Prepared: one script's arguments (Runtime._prepared's values). */
typedef struct {
    Holder refs;                /* the ScriptArgs (Python's methods use it), the owner of proto */
    const fp_fast_call *proto;  /* a cffi fp_fast_call: its inputs are what Runtime._fill set */
    uint64_t serial;            /* never reused: tells a thread's call whose inputs it holds */
} Prepared;

static uint64_t next_serial = 1;

static PyObject *prepared_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"args", "proto", "address", NULL};
    PyObject *script_args, *keep;
    unsigned long long address;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOK:Prepared", names, &script_args, &keep, &address) ||
        check_address(address, "Prepared") < 0) {
        return NULL;
    }
    Prepared *self = (Prepared *)holder_new(type, script_args, keep);
    if (self != NULL) {
        self->proto = (const fp_fast_call *)(uintptr_t)address;
        self->serial = next_serial++;
    }
    return (PyObject *)self;
}

static PyMemberDef prepared_members[] = {
    {"args", T_OBJECT, offsetof(Prepared, refs.ref[0]), READONLY, "the ScriptArgs"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject Prepared_Type = {
    HOLDER_TYPE("Prepared", Prepared, prepared_new),
    .tp_doc = PyDoc_STR("Prepared(args, proto, address): a script's ScriptArgs and the fp_fast_call "
                        "at `address` (owned by `proto`) whose inputs point at them."),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_members = prepared_members,
};

/* Running: what the C path needs of a running Runtime (Runtime._fast). */
typedef struct {
    Holder refs;      /* the ThreadPool (keeps its fp_pool alive during a call), Runtime._prepared */
    fp_pool *handle;
} Running;

#define RUNNING_POOL(r) ((r)->refs.ref[0])
#define RUNNING_PREPARED(r) ((r)->refs.ref[1]) /* script path (None: code) -> Prepared */

static PyObject *running_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"pool", "address", "prepared", NULL};
    PyObject *pool, *prepared;
    unsigned long long address;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OKO!:Running", names, &pool, &address, &PyDict_Type,
                                     &prepared) ||
        check_address(address, "Running") < 0) {
        return NULL;
    }
    Running *self = (Running *)holder_new(type, pool, prepared);
    if (self != NULL) {
        self->handle = (fp_pool *)(uintptr_t)address;
    }
    return (PyObject *)self;
}

static PyTypeObject Running_Type = {
    HOLDER_TYPE("Running", Running, running_new),
    .tp_doc = PyDoc_STR("Running(pool, address, prepared): a running runtime's ThreadPool, its "
                        "fp_pool at `address`, and its dict of Prepared arguments."),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
};

/* ---- each thread's fp_fast_call ------------------------------------------------------------ */

/* Reused call after call (fp_fast_execute keeps its output buffer); freed by the key's
 * destructor when the thread exits.  Its inputs point into a Prepared's ScriptArgs: they are
 * used only while `serial` is that of the Prepared the caller holds, so a Prepared (or a whole
 * runtime) going away leaves nothing to clean here. */
typedef struct {
    fp_fast_call call;
    uint64_t serial;
    int in_use;  /* a logging handler of this very call may call again: that one goes to Python */
} thread_call;

static pthread_key_t call_key;

static void thread_call_free(void *p)
{
    thread_call *tc = p;
    call_clear(&tc->call);
    free(tc);
    atomic_fetch_sub(&live_calls, 1);
}

static thread_call *this_thread_call(void)
{
    thread_call *tc = pthread_getspecific(call_key);
    if (tc == NULL) {
        tc = calloc(1, sizeof *tc);
        if (tc == NULL) {
            return NULL;
        }
        if (pthread_setspecific(call_key, tc) != 0) {
            free(tc);
            return NULL;
        }
        atomic_fetch_add(&live_calls, 1);
    }
    return tc;
}

/* ---- fast_method ----------------------------------------------------------------------------- */

typedef struct {
    Holder refs;  /* the Python method (everything but the common case), the instance __dict__
                   * (__doc__, __name__, __wrapped__ ...: functools.update_wrapper) */
    int kind;
    vectorcallfunc vectorcall;
} FastMethod;

#define METHOD_FUNC(m) ((m)->refs.ref[0])

static int lookup_attr(PyObject *obj, PyObject *name, PyObject **out)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, out);
#else
    return _PyObject_LookupAttr(obj, name, out);
#endif
}

/* The C path: 1 with *result set (NULL with an exception), or 0 when the Python method must
 * run (nothing ran). */
static int run_fast(const FastMethod *m, PyObject *self, PyObject *arg, PyObject **result)
{
    if (!PyUnicode_CheckExact(arg) || fast_execute == NULL) {
        return 0;
    }
    PyObject *obj = NULL;
    if (lookup_attr(self, str_fast, &obj) <= 0) {
        PyErr_Clear(); /* not a Runtime: Python says what is wrong */
        return 0;
    }
    if (!Py_IS_TYPE(obj, &Running_Type)) {
        Py_DECREF(obj); /* None: not running */
        return 0;
    }
    Running *running = (Running *)obj;
    /* Keyed by absolute path (None: code): a relative path is never found, Python resolves it. */
    PyObject *key = m->kind == KIND_FILE ? arg : Py_None;
    PyObject *found = PyDict_GetItemWithError(RUNNING_PREPARED(running), key);
    if (found == NULL || !Py_IS_TYPE(found, &Prepared_Type)) {
        PyErr_Clear(); /* first call for this script: Python prepares it */
        Py_DECREF(obj);
        return 0;
    }
    /* Held during the call: another thread may drop it from the cache meanwhile. */
    Prepared *prepared = (Prepared *)Py_NewRef(found);
    int handled = 0;
    const char *code = NULL;
    if (m->kind == KIND_CODE) {
        /* UTF-8 of the str itself (cached in it, no copy for ASCII): alive during the call.
         * Surrogates (UnicodeEncodeError) and NUL bytes are Python's to handle. */
        Py_ssize_t size;
        code = PyUnicode_AsUTF8AndSize(arg, &size);
        if (code == NULL || memchr(code, 0, (size_t)size) != NULL) {
            PyErr_Clear();
            goto done;
        }
    }
    thread_call *tc = this_thread_call();
    if (tc == NULL || tc->in_use) {
        goto done;
    }
    if (tc->serial != prepared->serial) {
        memcpy(&tc->call, prepared->proto, offsetof(fp_fast_call, member)); /* the inputs */
        tc->serial = prepared->serial;
    }
    if (code != NULL) {
        tc->call.code = code;
    }
    tc->in_use = 1;
    int member;
    Py_BEGIN_ALLOW_THREADS
    member = fast_execute(running->handle, -1, &tc->call);
    Py_END_ALLOW_THREADS
    if (member < 0 && tc->call.given_up) {
        /* Nothing ran (a missing script found by running it), but the pool gave its thread up
         * meanwhile (shutdown): the caller owns it; hand it to Python as _fast_retry does, then
         * let the Python method answer. */
        PyObject *thread = PyObject_CallMethod(RUNNING_POOL(running), "thread", "i", tc->call.member);
        PyObject *done = thread ? PyObject_CallMethod(RUNNING_POOL(running), "given_up", "O", thread) : NULL;
        if (!done) {
            PyErr_WriteUnraisable(RUNNING_POOL(running));
        }
        Py_XDECREF(done);
        Py_XDECREF(thread);
        tc->call.given_up = 0;
    }
    if (member >= 0) {
        handled = 1;
        fast_calls++;
        if (tc->call.rare) {
            PyObject *pool = RUNNING_POOL(running), *address = PyLong_FromVoidPtr(&tc->call);
            *result = address ? PyObject_CallFunctionObjArgs(rare_result, pool, address, NULL) : NULL;
            Py_XDECREF(address);
        } else {
            *result = common_result(&tc->call);
        }
    }
    tc->in_use = 0;
done:
    Py_DECREF(prepared);
    Py_DECREF(obj);
    return handled;
}

static PyObject *fast_method_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                        PyObject *kwnames)
{
    FastMethod *m = (FastMethod *)callable;
    if (PyVectorcall_NARGS(nargsf) == 2 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)) {
        PyObject *result;
        if (run_fast(m, args[0], args[1], &result)) {
            return result;
        }
    }
    return PyObject_Vectorcall(METHOD_FUNC(m), args, nargsf, kwnames);
}

static PyObject *fast_method_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"func", "kind", NULL};
    PyObject *func;
    int kind;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oi:fast_method", names, &func, &kind)) {
        return NULL;
    }
    if (!PyCallable_Check(func) || (kind != KIND_FILE && kind != KIND_CODE)) {
        PyErr_SetString(PyExc_ValueError, "fast_method(func, kind): a callable and FILE or CODE");
        return NULL;
    }
    FastMethod *self = (FastMethod *)holder_new(type, func, NULL);
    if (self != NULL) {
        self->kind = kind;
        self->vectorcall = fast_method_vectorcall;
    }
    return (PyObject *)self;
}

/* As a function does: the descriptor itself on the class, a bound method on an instance.
 * (Py_TPFLAGS_METHOD_DESCRIPTOR lets `rt.execute_file(path)` skip the bound method.) */
static PyObject *fast_method_get(PyObject *self, PyObject *obj, PyObject *type)
{
    (void)type;
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static PyObject *fast_method_repr(FastMethod *self)
{
    return PyUnicode_FromFormat("<fast_method %R>", METHOD_FUNC(self));
}

static PyGetSetDef fast_method_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FastMethod_Type = {
    HOLDER_TYPE("fast_method", FastMethod, fast_method_new),
    .tp_doc = PyDoc_STR("fast_method(func, kind): Runtime.execute_file (kind FILE) or execute_code "
                        "(CODE), whose common case runs in C; any other call goes to func."),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR |
                Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(FastMethod, vectorcall),
    .tp_descr_get = fast_method_get,
    .tp_dictoffset = offsetof(FastMethod, refs.ref[1]),
    .tp_getset = fast_method_getset,
    .tp_repr = (reprfunc)fast_method_repr,
};

/* ---- module functions -------------------------------------------------------------------------- */

static PyObject *setup(PyObject *module, PyObject *args)
{
    (void)module;
    unsigned long long execute_address, clear_address;
    Py_ssize_t call_size, member_offset;
    PyObject *rare;
    if (!PyArg_ParseTuple(args, "KKOnn:setup", &execute_address, &clear_address, &rare, &call_size,
                          &member_offset)) {
        return NULL;
    }
    /* Both extensions come from one build; a stale one would read another layout. */
    if (call_size != (Py_ssize_t)sizeof(fp_fast_call) ||
        member_offset != (Py_ssize_t)offsetof(fp_fast_call, member)) {
        PyErr_SetString(PyExc_ImportError, "frankenpy._fastcall and frankenpy._native were built from "
                                           "different sources: rebuild (python3 setup.py build_ext)");
        return NULL;
    }
    if (!execute_address || !clear_address || !PyCallable_Check(rare)) {
        PyErr_SetString(PyExc_ValueError, "setup(): two function addresses and a callable");
        return NULL;
    }
    Py_XSETREF(rare_result, Py_NewRef(rare));
    call_clear = (call_clear_fn)(uintptr_t)clear_address;
    fast_execute = (fast_execute_fn)(uintptr_t)execute_address;
    Py_RETURN_NONE;
}

static PyObject *stats(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return Py_BuildValue("{sKsl}", "fast_calls", (unsigned long long)fast_calls, "live_calls",
                         atomic_load(&live_calls));
}

static PyMethodDef module_methods[] = {
    {"setup", setup, METH_VARARGS,
     PyDoc_STR("setup(fp_fast_execute_for_python, fp_fast_call_clear, rare_result, sizeof_call, offsetof_member)"
               "\n--\n\nThe addresses of frankenpy._native's functions, and the Python callable "
               "(ThreadPool, call address) -> Result for calls with something rare to look at.")},
    {"set_result_type", set_result_type, METH_O,
     PyDoc_STR("set_result_type(type)\n--\n\nThe Result class new_result() and the C path build.")},
    {"new_result", (PyCFunction)(void (*)(void))new_result, METH_FASTCALL,
     PyDoc_STR("new_result(exit_status, output, diagnostics, timed_out, duration, time_limit, stderr)"
               "\n--\n\n``Result(...)`` (positional arguments in field order), built without "
               "running the frozen dataclass's __init__.")},
    {"stats", stats, METH_NOARGS,
     PyDoc_STR("stats()\n--\n\nfast_calls: executions the C path ran; live_calls: per-thread calls "
               "allocated and not yet freed.")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastcall_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "frankenpy._fastcall",
    .m_doc = PyDoc_STR("Runtime.execute_file/execute_code's common case in C (csrc/fastcall.c)."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastcall(void)
{
    if (PyType_Ready(&Prepared_Type) < 0 || PyType_Ready(&Running_Type) < 0 ||
        PyType_Ready(&FastMethod_Type) < 0) {
        return NULL;
    }
    str_fast = PyUnicode_InternFromString("_fast");
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    empty_tuple = PyTuple_New(0);
    if (str_fast == NULL || empty_bytes == NULL || empty_tuple == NULL) {
        return NULL;
    }
    if (pthread_key_create(&call_key, thread_call_free) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_key_create failed");
        return NULL;
    }
    PyObject *m = PyModule_Create(&fastcall_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Prepared", (PyObject *)&Prepared_Type) < 0 ||
        PyModule_AddObjectRef(m, "Running", (PyObject *)&Running_Type) < 0 ||
        PyModule_AddObjectRef(m, "fast_method", (PyObject *)&FastMethod_Type) < 0 ||
        PyModule_AddIntConstant(m, "FILE", KIND_FILE) < 0 ||
        PyModule_AddIntConstant(m, "CODE", KIND_CODE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
