/* The prefix index's core in C: cluster/index/prefix_core.py's NumpyCore, same methods, same
 * answers (tests/cluster/test_prefix_index_compact.py runs both over the same events).
 *
 * - a hash table block id (u64) -> holder state (u32): linear probing, Fibonacci hashing,
 *   backward-shift deletion (no tombstones), grown at 7/10 full, shrunk below 1/16;
 * - holder states: interned (held, predicted) worker bitsets, NWORDS u64 words each, found
 *   by content through their own open-addressing index; moves (state, code) -> state memoised
 *   in a second table;
 * - pending predictions: a third table, (block id ^ worker mix) -> prediction number.
 *
 * Built by `pip install -e .` (pyproject.toml ext-modules, optional: without a compiler the
 * numpy core serves). Not thread-safe: one router thread owns an index.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FIB 0x9E3779B97F4A7C15ull
#define STORE 1
#define EVICT 2
#define PREDICT 3
#define UNPREDICT 4
#define OP_BITS 3
#define MAX_MOVES (1u << 20)
#define PREFETCH 8 /* ids ahead whose table slots a match prefetches */

/* ---- table ------------------------------------------------------------------------- */

typedef struct {
    uint64_t *keys; /* 0: empty */
    uint32_t *vals;
    size_t mask, live;
    int shift;
} Table;

static inline size_t home(const Table *t, uint64_t k) { return (size_t)((k * FIB) >> t->shift) & t->mask; }

static int table_init(Table *t, size_t cap) {
    size_t n = 16;
    int bits = 4;
    while (n < cap) { n <<= 1; bits++; }
    t->keys = calloc(n, sizeof(uint64_t));
    t->vals = calloc(n, sizeof(uint32_t));
    if (!t->keys || !t->vals) { free(t->keys); free(t->vals); t->keys = NULL; t->vals = NULL; return -1; }
    t->mask = n - 1;
    t->shift = 64 - bits;
    t->live = 0;
    return 0;
}

static void table_free(Table *t) { free(t->keys); free(t->vals); t->keys = NULL; t->vals = NULL; }

static inline Py_ssize_t table_find(const Table *t, uint64_t k) {
    size_t i = home(t, k);
    for (;;) {
        uint64_t x = t->keys[i];
        if (x == k) return (Py_ssize_t)i;
        if (x == 0) return -1;
        i = (i + 1) & t->mask;
    }
}

static inline uint32_t table_get(const Table *t, uint64_t k) {
    Py_ssize_t i = table_find(t, k);
    return i < 0 ? 0 : t->vals[i];
}

static void table_place(Table *t, uint64_t k, uint32_t v) { /* k absent, room certain */
    size_t i = home(t, k);
    while (t->keys[i] != 0) i = (i + 1) & t->mask;
    t->keys[i] = k;
    t->vals[i] = v;
    t->live++;
}

static int table_resize(Table *t, size_t cap) {
    Table fresh;
    if (table_init(&fresh, cap) < 0) return -1;
    for (size_t i = 0; i <= t->mask; i++)
        if (t->keys[i]) table_place(&fresh, t->keys[i], t->vals[i]);
    table_free(t);
    *t = fresh;
    return 0;
}

static int table_put(Table *t, uint64_t k, uint32_t v) { /* v != 0 */
    if ((t->live + 1) * 10 > (t->mask + 1) * 7 && table_resize(t, 2 * (t->mask + 1)) < 0) return -1;
    size_t i = home(t, k);
    for (;;) {
        uint64_t x = t->keys[i];
        if (x == k) { t->vals[i] = v; return 0; }
        if (x == 0) { t->keys[i] = k; t->vals[i] = v; t->live++; return 0; }
        i = (i + 1) & t->mask;
    }
}

static void table_del_slot(Table *t, size_t i) {
    size_t j = i;
    for (;;) {
        j = (j + 1) & t->mask;
        uint64_t x = t->keys[j];
        if (x == 0) break;
        size_t h = home(t, x);
        int stays = (i <= j) ? (i < h && h <= j) : (i < h || h <= j);
        if (stays) continue;
        t->keys[i] = x;
        t->vals[i] = t->vals[j];
        i = j;
    }
    t->keys[i] = 0;
    t->vals[i] = 0;
    t->live--;
}

static int table_shrink(Table *t) {
    size_t cap = t->mask + 1;
    if (cap > 4096 && t->live * 16 < cap) return table_resize(t, 4 * t->live + 16);
    return 0;
}

/* ---- holder states ------------------------------------------------------------------- */

typedef struct {
    size_t nwords, count, cap;  /* words per bitset; states; room */
    uint64_t *bits;             /* per state: held[nwords] then predicted[nwords] */
    uint32_t *index;            /* state + 1 by content hash; 0 empty */
    size_t imask;
    Table moves;                /* (state << 32 | code) -> new state + 1 */
    uint64_t *scratch;
} States;

static inline uint64_t *held_of(const States *s, size_t st) { return s->bits + st * 2 * s->nwords; }

static uint64_t bits_hash(const uint64_t *w, size_t n) {
    uint64_t h = 0x243F6A8885A308D3ull;
    for (size_t i = 0; i < n; i++) { h = (h ^ w[i]) * FIB; h ^= h >> 29; }
    return h;
}

static int states_reindex(States *s) {
    size_t n = 64;
    while (n < 2 * s->count + 2) n <<= 1;
    uint32_t *index = calloc(n, sizeof(uint32_t));
    if (!index) return -1;
    free(s->index);
    s->index = index;
    s->imask = n - 1;
    for (size_t st = 0; st < s->count; st++) {
        size_t i = bits_hash(held_of(s, st), 2 * s->nwords) & s->imask;
        while (s->index[i]) i = (i + 1) & s->imask;
        s->index[i] = (uint32_t)st + 1;
    }
    return 0;
}

static int states_init(States *s) {
    memset(s, 0, sizeof(*s));
    s->nwords = 1;
    s->cap = 64;
    s->count = 1; /* state 0: nobody */
    s->bits = calloc(s->cap * 2 * s->nwords, sizeof(uint64_t));
    s->scratch = calloc(2 * s->nwords, sizeof(uint64_t));
    if (!s->bits || !s->scratch || table_init(&s->moves, 1024) < 0 || states_reindex(s) < 0) return -1;
    return 0;
}

static void states_free(States *s) {
    free(s->bits); free(s->index); free(s->scratch); table_free(&s->moves);
    s->bits = NULL; s->index = NULL; s->scratch = NULL;
}

static int states_widen(States *s, size_t worker) {
    size_t nw = s->nwords;
    while (worker >= nw * 64) nw *= 2;
    uint64_t *bits = calloc(s->cap * 2 * nw, sizeof(uint64_t));
    uint64_t *scratch = calloc(2 * nw, sizeof(uint64_t));
    if (!bits || !scratch) { free(bits); free(scratch); return -1; }
    for (size_t st = 0; st < s->count; st++) {
        memcpy(bits + st * 2 * nw, held_of(s, st), s->nwords * sizeof(uint64_t));
        memcpy(bits + st * 2 * nw + nw, held_of(s, st) + s->nwords, s->nwords * sizeof(uint64_t));
    }
    free(s->bits); free(s->scratch);
    s->bits = bits; s->scratch = scratch; s->nwords = nw;
    return states_reindex(s);
}

static Py_ssize_t states_intern(States *s, const uint64_t *w) {
    size_t n = 2 * s->nwords;
    size_t i = bits_hash(w, n) & s->imask;
    while (s->index[i]) {
        size_t st = s->index[i] - 1;
        if (memcmp(held_of(s, st), w, n * sizeof(uint64_t)) == 0) return (Py_ssize_t)st;
        i = (i + 1) & s->imask;
    }
    if (s->count >= UINT32_MAX - 1) return -1;
    if (s->count == s->cap) {
        uint64_t *bits = realloc(s->bits, s->cap * 2 * n * sizeof(uint64_t));
        if (!bits) return -1;
        s->bits = bits;
        s->cap *= 2;
    }
    size_t st = s->count++;
    memcpy(held_of(s, st), w, n * sizeof(uint64_t));
    s->index[i] = (uint32_t)st + 1;
    if (2 * s->count + 2 > s->imask + 1 && states_reindex(s) < 0) return -1;
    return (Py_ssize_t)st;
}

/* The state ``state`` becomes after ``code`` (op | worker << OP_BITS); -1 on no memory. */
static Py_ssize_t states_move(States *s, uint32_t state, uint32_t code) {
    uint64_t key = ((uint64_t)state << 32) | code;
    uint32_t known = table_get(&s->moves, key);
    if (known) return (Py_ssize_t)known - 1;
    size_t worker = code >> OP_BITS, op = code & ((1u << OP_BITS) - 1);
    if (worker >= s->nwords * 64 && states_widen(s, worker) < 0) return -1;
    size_t nw = s->nwords, word = worker / 64;
    uint64_t bit = 1ull << (worker % 64);
    uint64_t *w = s->scratch;
    memcpy(w, held_of(s, state), 2 * nw * sizeof(uint64_t));
    uint64_t *held = w, *pred = w + nw;
    switch (op) {
    case STORE: held[word] |= bit; pred[word] &= ~bit; break;
    case EVICT: held[word] &= ~bit; pred[word] &= ~bit; break;
    case PREDICT: if (!(held[word] & bit)) pred[word] |= bit; break;
    case UNPREDICT: pred[word] &= ~bit; break;
    default: PyErr_Format(PyExc_ValueError, "unknown holder move %zu", op); return -1;
    }
    Py_ssize_t new = states_intern(s, w);
    if (new < 0) return -1;
    if (s->moves.live >= MAX_MOVES) { table_free(&s->moves); if (table_init(&s->moves, 1024) < 0) return -1; }
    if (table_put(&s->moves, key, (uint32_t)new + 1) < 0) return -1;
    return new;
}

/* ---- the core object ----------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Table table, pending;
    States states;
} Core;

static inline uint64_t norm(uint64_t k) { return k < 2 ? 2 : k; }
static inline uint64_t pair_key(uint64_t id, uint64_t worker) { return norm(norm(id) ^ ((worker + 1) * FIB)); }

static int set_state(Table *t, uint64_t k, uint32_t v) {
    if (v) return table_put(t, k, v);
    Py_ssize_t i = table_find(t, k);
    if (i >= 0) table_del_slot(t, (size_t)i);
    return 0;
}

static int Core_init(Core *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist)) return -1;
    if (table_init(&self->table, 1024) < 0 || table_init(&self->pending, 1024) < 0 || states_init(&self->states) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void Core_dealloc(Core *self) {
    table_free(&self->table); table_free(&self->pending); states_free(&self->states);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int get_buffer(PyObject *obj, Py_buffer *view, size_t item, int writable, const char *what) {
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len % (Py_ssize_t)item) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes is not a whole number of %zu-byte items", what, view->len, item);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *no_memory(void) { return PyErr_Occurred() ? NULL : PyErr_NoMemory(); }

/* apply(ids, codes, lengths): event e moves lengths[e] consecutive ids by codes[e]. */
static PyObject *Core_apply(Core *self, PyObject *args) {
    PyObject *o_ids, *o_codes, *o_lengths;
    if (!PyArg_ParseTuple(args, "OOO", &o_ids, &o_codes, &o_lengths)) return NULL;
    Py_buffer ids, codes, lengths;
    if (get_buffer(o_ids, &ids, 8, 0, "ids") < 0) return NULL;
    if (get_buffer(o_codes, &codes, 4, 0, "codes") < 0) { PyBuffer_Release(&ids); return NULL; }
    if (get_buffer(o_lengths, &lengths, 4, 0, "lengths") < 0) {
        PyBuffer_Release(&ids); PyBuffer_Release(&codes); return NULL;
    }
    const uint64_t *id = ids.buf;
    const uint32_t *code = codes.buf, *length = lengths.buf;
    size_t n_ids = ids.len / 8, n_events = codes.len / 4, at = 0, failed = 0;
    if ((size_t)(lengths.len / 4) != n_events) {
        PyErr_SetString(PyExc_ValueError, "codes and lengths differ");
        failed = 1;
    }
    for (size_t e = 0; e < n_events && !failed; e++) {
        if (at + length[e] > n_ids) { PyErr_SetString(PyExc_ValueError, "lengths exceed ids"); failed = 1; break; }
        for (size_t j = 0; j < length[e]; j++, at++) {
            uint64_t k = norm(id[at]);
            Py_ssize_t slot = table_find(&self->table, k);
            uint32_t old = slot < 0 ? 0 : self->table.vals[slot];
            Py_ssize_t new = states_move(&self->states, old, code[e]);
            if (new < 0) { failed = 1; break; }
            if ((uint32_t)new == old) continue;
            if (slot >= 0 && new) self->table.vals[slot] = (uint32_t)new;
            else if (slot >= 0) table_del_slot(&self->table, (size_t)slot);
            else if (table_put(&self->table, k, (uint32_t)new) < 0) { failed = 1; break; }
        }
    }
    PyBuffer_Release(&ids); PyBuffer_Release(&codes); PyBuffer_Release(&lengths);
    if (failed) return no_memory();
    if (table_shrink(&self->table) < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* clear(worker): the worker holds and is predicted to hold nothing. */
static PyObject *Core_clear(Core *self, PyObject *arg) {
    size_t worker = PyLong_AsSize_t(arg);
    if (worker == (size_t)-1 && PyErr_Occurred()) return NULL;
    size_t count = self->states.count;
    uint32_t *remap = malloc(count * sizeof(uint32_t));
    if (!remap) return PyErr_NoMemory();
    uint32_t code = (uint32_t)(worker << OP_BITS) | EVICT;
    for (size_t st = 0; st < count; st++) {
        Py_ssize_t new = states_move(&self->states, (uint32_t)st, code);
        if (new < 0) { free(remap); return no_memory(); }
        remap[st] = (uint32_t)new;
    }
    Table *t = &self->table;
    size_t gone = 0;
    uint64_t *dead = NULL;
    for (size_t i = 0; i <= t->mask; i++) {
        if (!t->keys[i]) continue;
        uint32_t v = remap[t->vals[i]];
        t->vals[i] = v;
        if (!v) gone++;
    }
    if (gone) {
        dead = malloc(gone * sizeof(uint64_t));
        if (!dead) { free(remap); return PyErr_NoMemory(); }
        size_t k = 0;
        for (size_t i = 0; i <= t->mask; i++)
            if (t->keys[i] && !t->vals[i]) dead[k++] = t->keys[i];
        for (k = 0; k < gone; k++) {
            Py_ssize_t slot = table_find(t, dead[k]);
            if (slot >= 0) table_del_slot(t, (size_t)slot);
        }
        free(dead);
    }
    free(remap);
    if (table_shrink(t) < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static int parse_worker_ids(PyObject *args, size_t *worker, Py_buffer *ids, uint32_t *number) {
    PyObject *o_ids;
    unsigned long long w;
    unsigned long num;
    if (!PyArg_ParseTuple(args, "KOk", &w, &o_ids, &num)) return -1;
    *worker = (size_t)w;
    *number = (uint32_t)num;
    return get_buffer(o_ids, ids, 8, 0, "ids");
}

/* predict(worker, ids, number): the worker will hold ids (those it holds already stay held). */
static PyObject *Core_predict(Core *self, PyObject *args) {
    size_t worker;
    uint32_t number;
    Py_buffer ids;
    if (parse_worker_ids(args, &worker, &ids, &number) < 0) return NULL;
    const uint64_t *id = ids.buf;
    uint32_t code = (uint32_t)(worker << OP_BITS) | PREDICT;
    int failed = 0;
    for (size_t j = 0; j < (size_t)ids.len / 8 && !failed; j++) {
        uint64_t k = norm(id[j]);
        uint32_t old = table_get(&self->table, k);
        Py_ssize_t new = states_move(&self->states, old, code);
        if (new < 0 || set_state(&self->table, k, (uint32_t)new) < 0) { failed = 1; break; }
        const uint64_t *pred = held_of(&self->states, (size_t)new) + self->states.nwords;
        if ((pred[worker / 64] >> (worker % 64)) & 1)
            failed = table_put(&self->pending, pair_key(k, worker), number) < 0;
    }
    PyBuffer_Release(&ids);
    if (failed) return no_memory();
    Py_RETURN_NONE;
}

/* unpredict(worker, ids, number): undo prediction ``number`` where no later one replaced it. */
static PyObject *Core_unpredict(Core *self, PyObject *args) {
    size_t worker;
    uint32_t number;
    Py_buffer ids;
    if (parse_worker_ids(args, &worker, &ids, &number) < 0) return NULL;
    const uint64_t *id = ids.buf;
    uint32_t code = (uint32_t)(worker << OP_BITS) | UNPREDICT;
    int failed = 0;
    for (size_t j = 0; j < (size_t)ids.len / 8 && !failed; j++) {
        uint64_t k = norm(id[j]);
        Py_ssize_t slot = table_find(&self->pending, pair_key(k, worker));
        if (slot < 0 || self->pending.vals[slot] != number) continue;
        table_del_slot(&self->pending, (size_t)slot);
        Py_ssize_t new = states_move(&self->states, table_get(&self->table, k), code);
        if (new < 0 || set_state(&self->table, k, (uint32_t)new) < 0) failed = 1;
    }
    PyBuffer_Release(&ids);
    if (failed) return no_memory();
    if (table_shrink(&self->pending) < 0 || table_shrink(&self->table) < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* Leading ids (n of them, ``stride`` bytes apart: 8 for block ids, 16 for the chained hashes
 * whose first 8 bytes they are) each worker holds: out[w] for w < slots. Returns the most. */
static size_t match_into(Core *self, const char *ids, size_t n, size_t stride, int64_t *out, size_t slots,
                         uint64_t *alive) {
    size_t nw = self->states.nwords, end = 0;
    memset(out, 0, slots * sizeof(int64_t));
    uint64_t first;
    if (n) memcpy(&first, ids, 8);
    uint32_t prev = n ? table_get(&self->table, norm(first)) : 0;
    int any = 0;
    if (prev) {
        const uint64_t *h = held_of(&self->states, prev);
        for (size_t i = 0; i < nw; i++) { alive[i] = h[i] | h[i + nw]; any |= alive[i] != 0; }
        end = 1;
    }
    const Table *t = &self->table;
    for (size_t d = 1; d < n && any; d++, end = d) {
        uint64_t k;
        if (d + PREFETCH < n) { /* the ids are known ahead: start their slots' cache misses early */
            memcpy(&k, ids + (d + PREFETCH) * stride, 8);
            size_t slot = home(t, norm(k));
            __builtin_prefetch(t->keys + slot);
            __builtin_prefetch(t->vals + slot);
        }
        memcpy(&k, ids + d * stride, 8);
        uint32_t st = table_get(t, norm(k));
        if (st == prev) continue;
        prev = st;
        const uint64_t *h = held_of(&self->states, st);
        any = 0;
        for (size_t i = 0; i < nw; i++) {
            uint64_t now = alive[i] & (h[i] | h[i + nw]), dropped = alive[i] & ~now;
            while (dropped) {
                size_t w = i * 64 + (size_t)__builtin_ctzll(dropped);
                if (w < slots) out[w] = (int64_t)d;
                dropped &= dropped - 1;
            }
            alive[i] = now;
            any |= now != 0;
        }
        if (!any) break;
    }
    for (size_t i = 0; any && i < nw; i++) {
        uint64_t left = alive[i];
        while (left) {
            size_t w = i * 64 + (size_t)__builtin_ctzll(left);
            if (w < slots) out[w] = (int64_t)end;
            left &= left - 1;
        }
    }
    return end;
}

static int id_view(PyObject *obj, Py_buffer *view, Py_ssize_t stride, size_t *n) {
    if (stride != 8 && stride != 16) { PyErr_SetString(PyExc_ValueError, "stride must be 8 or 16"); return -1; }
    if (get_buffer(obj, view, (size_t)stride, 0, "ids") < 0) return -1;
    *n = (size_t)(view->len / stride);
    return 0;
}

/* match(ids, counts, stride=8) -> blocks matched by anyone: counts[w] = leading ids worker w holds. */
static PyObject *Core_match(Core *self, PyObject *args) {
    PyObject *o_ids, *o_counts;
    Py_ssize_t stride = 8;
    if (!PyArg_ParseTuple(args, "OO|n", &o_ids, &o_counts, &stride)) return NULL;
    Py_buffer ids, counts;
    size_t n;
    if (id_view(o_ids, &ids, stride, &n) < 0) return NULL;
    if (get_buffer(o_counts, &counts, 8, 1, "counts") < 0) { PyBuffer_Release(&ids); return NULL; }
    size_t nw = self->states.nwords;
    uint64_t stack[16], *alive = nw <= 16 ? stack : malloc(nw * sizeof(uint64_t));
    size_t end = 0;
    if (alive) end = match_into(self, ids.buf, n, (size_t)stride, counts.buf, (size_t)counts.len / 8, alive);
    if (alive && alive != stack) free(alive);
    PyBuffer_Release(&ids); PyBuffer_Release(&counts);
    if (!alive) return PyErr_NoMemory();
    return PyLong_FromSize_t(end);
}

/* The prefill pick of cluster/pool_handles.py (pick_prefill with RequestShape.prefill_cost):
 * cache affinity (least work, then load, then requests in flight) while the pool is balanced,
 * else least in flight, then load; ties to the earlier replica. Replica r holds counts[col[r]]
 * leading blocks of the prompt (counts[r] where col is NULL; a column outside the slots: none),
 * the host tier ``host`` of them. credit (or NULL): tokens replica r need not compute past its
 * prefix (segments it holds), taken off its work (RequestShape.segment_tokens). */
typedef struct {
    Py_ssize_t prompt, block, slack_requests;
    double host_weight, ratio, slack_tokens;
} Rule;

static Py_ssize_t choose(const Rule *rule, size_t replicas, const int64_t *counts, const int64_t *col, size_t slots,
                         int64_t host, const double *load, const int64_t *fly, const double *credit) {
    double lo = load[0], hi = load[0];
    int64_t flo = fly[0], fhi = fly[0];
    for (size_t r = 1; r < replicas; r++) {
        if (load[r] < lo) lo = load[r];
        if (load[r] > hi) hi = load[r];
        if (fly[r] < flo) flo = fly[r];
        if (fly[r] > fhi) fhi = fly[r];
    }
    int imbalanced = hi > rule->ratio * lo + rule->slack_tokens
                     || (double)fhi > rule->ratio * (double)flo + (double)rule->slack_requests;
    double best_work = 0, best_load = 0;
    int64_t best_fly = 0, block = rule->block;
    Py_ssize_t chosen = -1;
    for (size_t r = 0; r < replicas; r++) {
        int64_t c = !col ? counts[r] : col[r] >= 0 && (size_t)col[r] < slots ? counts[col[r]] : 0;
        int64_t uncached = rule->prompt - c * block;
        if (uncached < 0) uncached = 0;
        int64_t pulled = (host - c > 0 && rule->host_weight < 1) ? (host - c) * block : 0;
        double work = (double)(uncached - pulled) + rule->host_weight * (double)pulled;
        if (credit) work -= credit[r];
        int better;
        if (chosen < 0) better = 1;
        else if (imbalanced)
            better = fly[r] < best_fly || (fly[r] == best_fly && load[r] < best_load);
        else
            better = work < best_work || (work == best_work && (load[r] < best_load ||
                     (load[r] == best_load && fly[r] < best_fly)));
        if (better) { chosen = (Py_ssize_t)r; best_work = work; best_load = load[r]; best_fly = fly[r]; }
    }
    return chosen;
}

/* The per-replica buffers of route and pick: loads, inflight and credit (None: no credit), each
 * ``replicas`` long. 0, or -1 with an exception set and nothing held. */
typedef struct { Py_buffer loads, inflight, credit; int has_credit; } LoadBuffers;

static void release_loads(LoadBuffers *b) {
    PyBuffer_Release(&b->loads); PyBuffer_Release(&b->inflight);
    if (b->has_credit) PyBuffer_Release(&b->credit);
}

static int get_loads(LoadBuffers *b, PyObject *o_loads, PyObject *o_inflight, PyObject *o_credit, size_t replicas) {
    b->has_credit = 0;
    if (get_buffer(o_loads, &b->loads, 8, 0, "loads") < 0) return -1;
    if (get_buffer(o_inflight, &b->inflight, 8, 0, "inflight") < 0) { PyBuffer_Release(&b->loads); return -1; }
    if (o_credit != Py_None) {
        if (get_buffer(o_credit, &b->credit, 8, 0, "credit") < 0) {
            PyBuffer_Release(&b->loads); PyBuffer_Release(&b->inflight); return -1;
        }
        b->has_credit = 1;
    }
    if (!replicas || (size_t)b->loads.len / 8 != replicas || (size_t)b->inflight.len / 8 != replicas
        || (b->has_credit && (size_t)b->credit.len / 8 != replicas)) {
        release_loads(b);
        PyErr_SetString(PyExc_ValueError,
                        "columns/counts, loads, inflight (and credit) need one entry per replica (and one at least)");
        return -1;
    }
    return 0;
}

/* route(ids, stride, columns, loads, inflight, prompt_tokens, block_size, host_column, host_weight,
 *       ratio, slack_requests, slack_tokens, credit=None) -> replica
 * The match of ids and the pick (``choose``) in one call: replica r is worker columns[r] of the
 * index. cluster/fleet_router.py holds the same rule in numpy. */
static PyObject *Core_route(Core *self, PyObject *args) {
    PyObject *o_ids, *o_cols, *o_loads, *o_inflight, *o_credit = Py_None;
    Py_ssize_t stride, host_col;
    Rule rule;
    if (!PyArg_ParseTuple(args, "OnOOOnnnddnd|O", &o_ids, &stride, &o_cols, &o_loads, &o_inflight, &rule.prompt,
                          &rule.block, &host_col, &rule.host_weight, &rule.ratio, &rule.slack_requests,
                          &rule.slack_tokens, &o_credit))
        return NULL;
    Py_buffer ids, cols;
    LoadBuffers b;
    size_t n;
    if (id_view(o_ids, &ids, stride, &n) < 0) return NULL;
    if (get_buffer(o_cols, &cols, 8, 0, "columns") < 0) { PyBuffer_Release(&ids); return NULL; }
    size_t replicas = (size_t)cols.len / 8, nw = self->states.nwords, slots = nw * 64;
    if (get_loads(&b, o_loads, o_inflight, o_credit, replicas) < 0) {
        PyBuffer_Release(&ids); PyBuffer_Release(&cols); return NULL;
    }
    int64_t *counts = malloc(slots * sizeof(int64_t));
    uint64_t *alive = malloc(nw * sizeof(uint64_t));
    Py_ssize_t chosen = -1;
    if (counts && alive) {
        match_into(self, ids.buf, n, (size_t)stride, counts, slots, alive);
        int64_t host = host_col >= 0 && (size_t)host_col < slots ? counts[host_col] : 0;
        chosen = choose(&rule, replicas, counts, cols.buf, slots, host, b.loads.buf, b.inflight.buf,
                        b.has_credit ? b.credit.buf : NULL);
    } else {
        PyErr_NoMemory();
    }
    free(counts); free(alive);
    PyBuffer_Release(&ids); PyBuffer_Release(&cols); release_loads(&b);
    return chosen < 0 ? NULL : PyLong_FromSsize_t(chosen);
}

/* pick(counts, loads, inflight, prompt_tokens, block_size, host_blocks, host_weight, ratio,
 *      slack_requests, slack_tokens, credit=None) -> replica
 * ``choose`` for a match made before (counts[r]: leading blocks replica r holds; the host tier
 * host_blocks): the dispatcher's pick from a RequestShape. Reads nothing of the index. */
static PyObject *Core_pick(Core *Py_UNUSED(self), PyObject *args) {
    PyObject *o_counts, *o_loads, *o_inflight, *o_credit = Py_None;
    Py_ssize_t host;
    Rule rule;
    if (!PyArg_ParseTuple(args, "OOOnnnddnd|O", &o_counts, &o_loads, &o_inflight, &rule.prompt, &rule.block, &host,
                          &rule.host_weight, &rule.ratio, &rule.slack_requests, &rule.slack_tokens, &o_credit))
        return NULL;
    Py_buffer counts;
    LoadBuffers b;
    if (get_buffer(o_counts, &counts, 8, 0, "counts") < 0) return NULL;
    size_t replicas = (size_t)counts.len / 8;
    if (get_loads(&b, o_loads, o_inflight, o_credit, replicas) < 0) { PyBuffer_Release(&counts); return NULL; }
    Py_ssize_t chosen = choose(&rule, replicas, counts.buf, NULL, replicas, host, b.loads.buf, b.inflight.buf,
                               b.has_credit ? b.credit.buf : NULL);
    PyBuffer_Release(&counts); release_loads(&b);
    return PyLong_FromSsize_t(chosen);
}

/* compact(): drop states no block is in, renumber the rest (answers unchanged). */
static PyObject *Core_compact(Core *self, PyObject *Py_UNUSED(ignored)) {
    States *s = &self->states;
    Table *t = &self->table;
    uint32_t *remap = calloc(s->count, sizeof(uint32_t));
    if (!remap) return PyErr_NoMemory();
    for (size_t i = 0; i <= t->mask; i++)
        if (t->keys[i]) remap[t->vals[i]] = 1;
    size_t n = 1, words = 2 * s->nwords;
    for (size_t st = 1; st < s->count; st++) {
        if (!remap[st]) continue;
        memmove(held_of(s, n), held_of(s, st), words * sizeof(uint64_t));
        remap[st] = (uint32_t)n++;
    }
    s->count = n;
    for (size_t i = 0; i <= t->mask; i++)
        if (t->keys[i]) t->vals[i] = remap[t->vals[i]];
    free(remap);
    table_free(&s->moves);
    if (table_init(&s->moves, 1024) < 0 || states_reindex(s) < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* export() -> (ids bytes, states bytes): every block id held or predicted, and its state. */
static PyObject *Core_export(Core *self, PyObject *Py_UNUSED(ignored)) {
    Table *t = &self->table;
    PyObject *keys = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(t->live * 8));
    PyObject *vals = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(t->live * 4));
    if (!keys || !vals) { Py_XDECREF(keys); Py_XDECREF(vals); return NULL; }
    uint64_t *k = (uint64_t *)PyBytes_AS_STRING(keys);
    uint32_t *v = (uint32_t *)PyBytes_AS_STRING(vals);
    size_t n = 0;
    for (size_t i = 0; i <= t->mask; i++)
        if (t->keys[i]) { k[n] = t->keys[i]; v[n] = t->vals[i]; n++; }
    return Py_BuildValue("(NN)", keys, vals);
}

/* state(s) -> (held, predicted): the worker bitsets as ints. */
static PyObject *Core_state(Core *self, PyObject *arg) {
    size_t st = PyLong_AsSize_t(arg);
    if (st == (size_t)-1 && PyErr_Occurred()) return NULL;
    if (st >= self->states.count) { PyErr_SetString(PyExc_IndexError, "no such state"); return NULL; }
    size_t nw = self->states.nwords;
    const uint64_t *h = held_of(&self->states, st);
    PyObject *held = PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "y#s", (const char *)h,
                                         (Py_ssize_t)(nw * 8), "little");
    PyObject *pred = PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "y#s", (const char *)(h + nw),
                                         (Py_ssize_t)(nw * 8), "little");
    if (!held || !pred) { Py_XDECREF(held); Py_XDECREF(pred); return NULL; }
    return Py_BuildValue("(NN)", held, pred);
}

static Py_ssize_t Core_len(Core *self) { return (Py_ssize_t)self->table.live; }

static PyObject *Core_get_nbytes(Core *self, void *Py_UNUSED(c)) {
    const States *s = &self->states;
    size_t bytes = (self->table.mask + 1) * 12 + (self->pending.mask + 1) * 12 + (s->moves.mask + 1) * 12
                   + s->cap * 2 * s->nwords * 8 + (s->imask + 1) * 4;
    return PyLong_FromSize_t(bytes);
}

static PyObject *Core_get_num_states(Core *self, void *Py_UNUSED(c)) { return PyLong_FromSize_t(self->states.count); }
static PyObject *Core_get_num_pending(Core *self, void *Py_UNUSED(c)) { return PyLong_FromSize_t(self->pending.live); }

static PyMethodDef Core_methods[] = {
    {"apply", (PyCFunction)Core_apply, METH_VARARGS,
     "apply(ids, codes, lengths): event e moves lengths[e] ids by codes[e]"},
    {"clear", (PyCFunction)Core_clear, METH_O, "clear(worker): it holds nothing"},
    {"predict", (PyCFunction)Core_predict, METH_VARARGS, "predict(worker, ids, number)"},
    {"unpredict", (PyCFunction)Core_unpredict, METH_VARARGS, "unpredict(worker, ids, number)"},
    {"match", (PyCFunction)Core_match, METH_VARARGS, "match(ids, counts, stride=8) -> leading blocks anyone holds"},
    {"route", (PyCFunction)Core_route, METH_VARARGS,
     "route(ids, stride, columns, loads, inflight, prompt_tokens, block_size, host_column, host_weight, ratio, "
     "slack_requests, slack_tokens, credit=None) -> the replica to prefill on"},
    {"pick", (PyCFunction)Core_pick, METH_VARARGS,
     "pick(counts, loads, inflight, prompt_tokens, block_size, host_blocks, host_weight, ratio, slack_requests, "
     "slack_tokens, credit=None) -> the replica to prefill on, for counts matched before"},
    {"compact", (PyCFunction)Core_compact, METH_NOARGS, "drop unused holder states"},
    {"export", (PyCFunction)Core_export, METH_NOARGS, "export() -> (ids bytes, states bytes)"},
    {"state", (PyCFunction)Core_state, METH_O, "state(s) -> (held, predicted) worker bitsets"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"nbytes", (getter)Core_get_nbytes, NULL, "bytes the core's arrays take", NULL},
    {"num_states", (getter)Core_get_num_states, NULL, "holder states", NULL},
    {"num_pending", (getter)Core_get_num_pending, NULL, "(worker, block) predictions pending", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Core_as_sequence = {.sq_length = (lenfunc)Core_len};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cluster.index._prefix_core.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The prefix index's core: block ids -> interned holder states (see cluster/index/prefix_core.py)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
    .tp_as_sequence = &Core_as_sequence,
};

/* ---- prompt hashing ------------------------------------------------------------------ */

/* BLAKE2b (RFC 7693), unkeyed, 16-byte digests: hashlib.blake2b(data, digest_size=16). */
static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ull, 0xbb67ae8584caa73bull, 0x3c6ef372fe94f82bull, 0xa54ff53a5f1d36f1ull,
    0x510e527fade682d1ull, 0x9b05688c2b3e6c1full, 0x1f83d9abfb41bd6bull, 0x5be0cd19137e2179ull,
};
static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }
static inline uint64_t load64(const uint8_t *p) { /* little-endian */
    uint64_t x;
    memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

#define B2_G(a, b, c, d, x, y) do { \
    v[a] = v[a] + v[b] + (x); v[d] = rotr64(v[d] ^ v[a], 32); v[c] = v[c] + v[d]; v[b] = rotr64(v[b] ^ v[c], 24); \
    v[a] = v[a] + v[b] + (y); v[d] = rotr64(v[d] ^ v[a], 16); v[c] = v[c] + v[d]; v[b] = rotr64(v[b] ^ v[c], 63); \
} while (0)

static void b2_compress(uint64_t h[8], const uint8_t block[128], uint64_t bytes, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) { v[i] = h[i]; v[i + 8] = B2_IV[i]; }
    v[12] ^= bytes; /* the counter's high word stays 0: a message is far below 2^64 bytes */
    if (last) v[14] = ~v[14];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
#pragma GCC unroll 12
    for (int r = 0; r < 12; r++) { /* unrolled: the message schedule's indexes become constants */
        const uint8_t *s = B2_SIGMA[r];
        B2_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

static void blake2b16(const uint8_t *in, size_t len, uint8_t out[16]) {
    uint64_t h[8];
    uint8_t last[128];
    memcpy(h, B2_IV, sizeof h);
    h[0] ^= 0x01010000ull ^ 16; /* fanout 1, depth 1, no key, 16-byte digest */
    size_t done = 0;
    while (len - done > 128) { b2_compress(h, in + done, done + 128, 0); done += 128; }
    memset(last, 0, sizeof last);
    memcpy(last, in + done, len - done);
    b2_compress(h, last, len, 1);
    for (int i = 0; i < 16; i++) out[i] = (uint8_t)(h[i / 8] >> (8 * (i % 8))); /* little-endian words */
}

/* block_ids(tokens, block_size, salt=b"", parent=16 zero bytes) -> bytes
 * engine/block_hash.hash_blocks's chain in C, each full block's 16-byte blake2b digest of
 * parent + its tokens as int64 + (b"\x01salt" + salt if salt), kept as the block id (its first
 * 8 bytes, kvstore.kv_events.block_ids): the ids as uint64 bytes, one per full block. */
static PyObject *block_ids_of(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *o_tokens;
    Py_ssize_t block;
    const char *salt = "", *parent = NULL;
    Py_ssize_t salt_len = 0, parent_len = 16;
    static const char root[16] = {0};
    if (!PyArg_ParseTuple(args, "On|y#y#", &o_tokens, &block, &salt, &salt_len, &parent, &parent_len)) return NULL;
    if (block <= 0 || parent_len != 16) {
        PyErr_SetString(PyExc_ValueError, "block_size must be positive and parent 16 bytes");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(o_tokens, "tokens must be a sequence of ints");
    if (!seq) return NULL;
    Py_ssize_t blocks = PySequence_Fast_GET_SIZE(seq) / block;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    size_t tail = salt_len ? 5 + (size_t)salt_len : 0, len = 16 + 8 * (size_t)block + tail;
    uint8_t *buf = malloc(len), digest[16];
    PyObject *out = buf ? PyBytes_FromStringAndSize(NULL, 8 * blocks) : NULL;
    if (!out) { free(buf); Py_DECREF(seq); return buf ? NULL : PyErr_NoMemory(); }
    char *ids = PyBytes_AS_STRING(out);
    memcpy(buf, parent ? parent : root, 16);
    if (tail) { memcpy(buf + len - tail, "\x01salt", 5); memcpy(buf + len - tail + 5, salt, (size_t)salt_len); }
    for (Py_ssize_t b = 0; b < blocks; b++) {
        for (Py_ssize_t i = 0; i < block; i++) {
            long long token = PyLong_AsLongLong(items[b * block + i]);
            if (token == -1 && PyErr_Occurred()) { free(buf); Py_DECREF(seq); Py_DECREF(out); return NULL; }
            memcpy(buf + 16 + 8 * i, &token, 8);
        }
        blake2b16(buf, len, digest);
        memcpy(ids + 8 * b, digest, 8);
        memcpy(buf, digest, 16);
    }
    free(buf);
    Py_DECREF(seq);
    return out;
}

static PyMethodDef module_methods[] = {
    {"block_ids", block_ids_of, METH_VARARGS,
     "block_ids(tokens, block_size, salt=b'', parent=bytes(16)) -> uint64 ids (bytes) of the full blocks' chained "
     "hashes (engine/block_hash.hash_blocks)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_prefix_core", .m_doc = "The prefix index's core in C.", .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__prefix_core(void) {
    if (PyType_Ready(&CoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0) { Py_DECREF(&CoreType); Py_DECREF(m); return NULL; }
    return m;
}
