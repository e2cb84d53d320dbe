/*
 * sl_presence: see sl_presence.h.
 *
 * One entry per channel known for any reason (local subscriptions or users, another instance's
 * snapshot, listeners), freed as soon as nothing refers to it. A channel holds its local users
 * (their tabs, their grace), the union (each user with the number of sources listing it: this
 * instance is one source, each other instance one more) and its listeners. Joins and leaves are
 * the union's 0 -> 1 and 1 -> 0 transitions, so a snapshot listing the same users again costs
 * hash lookups and no event: applying an instance's newer snapshot adds its users to the union
 * before it takes the previous snapshot's away.
 *
 * A snapshot is JSON, in parts when it would pass part_bytes (a channel's users may go on in the
 * next part; its count is in the first):
 *   {"v":1,"boot":"<16 hex>","instance":"<name>","round":N,"part":I,"ttl_ms":T,
 *    "channels":[{"channel":"general","count":3,"truncated":false,"users":[["alice","Alice"],["bob"]]}],
 *    "last":true}
 * A receiver applies a round once all its parts came in order (0, 1, ... up to the one with
 * "last":true); a round that breaks off is dropped and the snapshot held stays until the TTL.
 */
#include "sl_presence.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "sl_buf.h"
#include "sl_log.h"
#include "sl_message.h"

#define MAX_EVENT_ROUNDS 8      /* listeners that make events from events: go on next turn after that */
#define RETRY_MS 5              /* a part that found no room is offered again after this */
#define PART_BYTES_MIN 16384    /* room for a header, a channel and one user of the longest kind */
#define CLOSE_RESERVE 32        /* what closing a part takes: ]}],"last":false} */

/* ---- a string-keyed hash table of intrusive nodes ---------------------------------------------- */

struct node {
    struct node *next;
    uint32_t hash;
    char *key;
};

struct map {
    struct node **b;
    size_t nb, n;
};

#define MAP_EACH(m, var)                                                                                            \
    for (size_t var##_i = 0; var##_i < (m)->nb; var##_i++)                                                          \
        for (struct node *var = (m)->b[var##_i], *var##_next = var != NULL ? var->next : NULL; var != NULL;       \
             var = var##_next, var##_next = var != NULL ? var->next : NULL)

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static struct node *map_find(const struct map *m, const char *key)
{
    if (m->nb == 0)
        return NULL;
    uint32_t h = hash_str(key);
    for (struct node *e = m->b[h & (m->nb - 1)]; e != NULL; e = e->next) {
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    }
    return NULL;
}

/* Adds e (its key set, not in m yet). Returns 0, or -1 on no memory (e not added). */
static int map_add(struct map *m, struct node *e)
{
    if (m->n >= m->nb) {
        size_t nb = m->nb != 0 ? m->nb * 2 : 8;
        struct node **b = calloc(nb, sizeof(*b));
        if (b == NULL) {
            if (m->nb == 0)
                return -1;
        } else {
            MAP_EACH(m, x) {
                x->next = b[x->hash & (nb - 1)];
                b[x->hash & (nb - 1)] = x;
            }
            free(m->b);
            m->b = b;
            m->nb = nb;
        }
    }
    e->hash = hash_str(e->key);
    e->next = m->b[e->hash & (m->nb - 1)];
    m->b[e->hash & (m->nb - 1)] = e;
    m->n++;
    return 0;
}

static void map_del(struct map *m, struct node *e)
{
    for (struct node **p = &m->b[e->hash & (m->nb - 1)]; *p != NULL; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            m->n--;
            return;
        }
    }
}

static void map_free(struct map *m)
{
    free(m->b);
    memset(m, 0, sizeof(*m));
}

/* ---- state ----------------------------------------------------------------------------------- */

struct chan;

/* A user of this instance in a channel. */
struct luser {
    struct node n;        /* key: the id */
    char *name;
    struct chan *c;
    long tabs;            /* local subscriptions of this user to this channel */
    uint64_t left_at;     /* when tabs fell to 0 (in grace; in p->graces), else 0 */
    int admitted;         /* listed (one of the first max_users), hence in the union */
    h2o_linklist_t wait;  /* in c->waiting while not admitted */
    h2o_linklist_t grace; /* in p->graces while in grace */
};

/* A user of the union. */
struct auser {
    struct node n;
    char *name;
    unsigned refs; /* sources listing it: this instance, other instances */
};

struct chan {
    struct node n;          /* key: the channel */
    long long local_count;  /* local subscriptions */
    struct map local;       /* struct luser */
    size_t admitted;
    h2o_linklist_t waiting; /* local users past max_users, first come first */
    struct map agg;         /* struct auser: the union */
    long long remote_count; /* summed over the other instances' snapshots */
    unsigned remote_refs;   /* snapshots listing the channel */
    unsigned remote_truncated;
    h2o_linklist_t listeners;
};

struct sl_presence_entry {
    h2o_linklist_t link; /* in p->entries */
    sl_presence_t *p;
    struct chan *c;
    struct luser *u; /* NULL: anonymous */
};

struct sl_presence_listener {
    h2o_linklist_t link; /* in c->listeners, or p->all_listeners */
    sl_presence_t *p;
    struct chan *c;      /* NULL: every channel */
    sl_presence_cb cb;
    void *data;
    int dead;            /* unlistened during a dispatch: freed after it */
    sl_presence_listener_t *next_dead;
};

/* A channel of another instance's snapshot. */
struct ruser {
    char *id, *name;
};

struct rchan {
    struct node n;
    struct chan *c; /* once applied */
    long long count;
    int truncated;
    struct ruser *users;
    size_t nusers, capusers;
};

/* Another instance. */
struct inst {
    struct node n; /* key: its boot id */
    char *name;
    uint64_t last_seen, ttl_ms;
    int has_round;
    uint64_t round;   /* of the snapshot applied */
    struct map chans; /* struct rchan: the snapshot applied */
    int pending;      /* a round being assembled */
    uint64_t pend_round;
    long long pend_next;
    struct map pend;
};

struct pevent {
    sl_presence_event_type_t type;
    char *channel, *id, *name;
};

struct sl_presence {
    h2o_loop_t *loop;
    char *instance;
    long long heartbeat_ms, ttl_ms, grace_ms, max_users, min_interval_ms;
    size_t part_bytes;
    sl_presence_send_cb send;
    void *send_data;
    char boot[17];
    uint64_t now; /* the clock without a loop */
    struct map chans, insts;
    h2o_linklist_t graces; /* struct luser, oldest first (grace_ms is one for all) */
    h2o_linklist_t all_listeners;
    h2o_linklist_t entries; /* every handle, for destroy */
    struct pevent *events;
    size_t nevents, capevents;
    int dispatching;
    sl_presence_listener_t *dead;
    /* sending */
    int started, changed, send_now;
    uint64_t round, last_round_at;
    sl_buf_t *parts;
    size_t nparts, next_part;
    h2o_timeout_t tick_timeout, soon_timeout, retry_timeout, later_timeout;
    h2o_timeout_entry_t tick, soon, retry, later; /* later: a change waiting for min_interval_ms */
    sl_presence_stats_t stats;
};

static uint64_t clock_ms(const sl_presence_t *p)
{
    return p->loop != NULL ? h2o_now(p->loop) : p->now;
}

/* Runs sl_presence_run at the end of this loop turn. */
static void schedule(sl_presence_t *p)
{
    if (p->loop != NULL && !h2o_timeout_is_linked(&p->soon))
        h2o_timeout_link(p->loop, &p->soon_timeout, &p->soon);
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* A name as kept: valid UTF-8 (else none), at most SL_PRESENCE_NAME_MAX bytes cut at a character
 * boundary. malloc'd; NULL for none or no memory. */
static char *name_copy(const char *name)
{
    if (name == NULL || *name == '\0')
        return NULL;
    size_t len = strlen(name);
    if (sl_utf8_count(name, len) < 0)
        return NULL;
    if (len > SL_PRESENCE_NAME_MAX) {
        len = SL_PRESENCE_NAME_MAX;
        while (len > 0 && ((unsigned char)name[len] & 0xC0) == 0x80)
            len--;
    }
    return strndup(name, len);
}

static int id_valid(const char *id, size_t len)
{
    return len > 0 && len <= SL_PRESENCE_ID_MAX && memchr(id, '\0', len) == NULL && sl_utf8_count(id, len) >= 0;
}

/* ---- channels, the union, events --------------------------------------------------------------- */

static struct chan *chan_find(const sl_presence_t *p, const char *name)
{
    return (struct chan *)map_find(&p->chans, name);
}

static struct chan *chan_get(sl_presence_t *p, const char *name)
{
    struct chan *c = chan_find(p, name);
    if (c != NULL)
        return c;
    if ((c = calloc(1, sizeof(*c))) == NULL || (c->n.key = strdup(name)) == NULL || map_add(&p->chans, &c->n) != 0) {
        if (c != NULL)
            free(c->n.key);
        free(c);
        return NULL;
    }
    h2o_linklist_init_anchor(&c->waiting);
    h2o_linklist_init_anchor(&c->listeners);
    return c;
}

/* Frees c once nothing refers to it. */
static void chan_gc(sl_presence_t *p, struct chan *c)
{
    if (c->local_count != 0 || c->local.n != 0 || c->agg.n != 0 || c->remote_refs != 0 ||
        !h2o_linklist_is_empty(&c->listeners))
        return;
    map_del(&p->chans, &c->n);
    map_free(&c->local);
    map_free(&c->agg);
    free(c->n.key);
    free(c);
}

static int has_listeners(sl_presence_t *p, struct chan *c)
{
    return !h2o_linklist_is_empty(&c->listeners) || !h2o_linklist_is_empty(&p->all_listeners);
}

static void queue_event(sl_presence_t *p, struct chan *c, sl_presence_event_type_t type, const char *id,
                        const char *name)
{
    if (type == SL_PRESENCE_JOIN)
        p->stats.joins++;
    else
        p->stats.leaves++;
    if (!has_listeners(p, c))
        return;
    if (p->nevents == p->capevents) {
        size_t cap = p->capevents != 0 ? p->capevents * 2 : 16;
        struct pevent *e = realloc(p->events, cap * sizeof(*e));
        if (e == NULL)
            return;
        p->events = e;
        p->capevents = cap;
    }
    struct pevent *e = &p->events[p->nevents];
    e->type = type;
    e->channel = strdup(c->n.key);
    e->id = strdup(id);
    e->name = dup_or_null(name);
    if (e->channel == NULL || e->id == NULL || (name != NULL && e->name == NULL)) {
        free(e->channel);
        free(e->id);
        free(e->name);
        return;
    }
    p->nevents++;
    schedule(p);
}

static void agg_add(sl_presence_t *p, struct chan *c, const char *id, const char *name)
{
    struct auser *a = (struct auser *)map_find(&c->agg, id);
    if (a != NULL) {
        a->refs++;
        if (a->name == NULL && name != NULL)
            a->name = strdup(name);
        return;
    }
    if ((a = calloc(1, sizeof(*a))) == NULL || (a->n.key = strdup(id)) == NULL || map_add(&c->agg, &a->n) != 0) {
        if (a != NULL)
            free(a->n.key);
        free(a);
        return; /* out of memory: the user is missing from the union (a later remove finds nothing) */
    }
    a->name = dup_or_null(name);
    a->refs = 1;
    queue_event(p, c, SL_PRESENCE_JOIN, id, a->name);
}

static void agg_remove(sl_presence_t *p, struct chan *c, const char *id)
{
    struct auser *a = (struct auser *)map_find(&c->agg, id);
    if (a == NULL || --a->refs > 0)
        return;
    queue_event(p, c, SL_PRESENCE_LEAVE, id, a->name);
    map_del(&c->agg, &a->n);
    free(a->n.key);
    free(a->name);
    free(a);
}

/* The local set changed: the others should know soon (heartbeat_ms / 10 after the last round). */
static void mark_changed(sl_presence_t *p)
{
    p->changed = 1;
    schedule(p);
}

static void admit(sl_presence_t *p, struct chan *c, struct luser *u)
{
    u->admitted = 1;
    c->admitted++;
    agg_add(p, c, u->n.key, u->name);
    mark_changed(p);
}

/* u's grace ended: it leaves the local set (and the union, unless another instance lists it). */
static void remove_luser(sl_presence_t *p, struct luser *u)
{
    struct chan *c = u->c;
    if (u->admitted) {
        agg_remove(p, c, u->n.key);
        c->admitted--;
        mark_changed(p);
        if (!h2o_linklist_is_empty(&c->waiting)) {
            struct luser *next = H2O_STRUCT_FROM_MEMBER(struct luser, wait, c->waiting.next);
            h2o_linklist_unlink(&next->wait);
            admit(p, c, next);
        }
    } else {
        h2o_linklist_unlink(&u->wait);
    }
    map_del(&c->local, &u->n);
    free(u->n.key);
    free(u->name);
    free(u);
    chan_gc(p, c);
}

static int chan_truncated(const sl_presence_t *p, const struct chan *c)
{
    return c->waiting.next != &c->waiting || c->remote_truncated > 0 || (long long)c->agg.n > p->max_users;
}

/* ---- the local registry ---------------------------------------------------------------------- */

sl_presence_entry_t *sl_presence_enter(sl_presence_t *p, const char *channel, const sl_presence_user_t *user)
{
    if (user != NULL && (user->id == NULL || !id_valid(user->id, strlen(user->id))))
        return NULL;
    struct chan *c = chan_get(p, channel);
    sl_presence_entry_t *e = c != NULL ? calloc(1, sizeof(*e)) : NULL;
    if (e == NULL)
        goto Fail;
    e->p = p;
    e->c = c;
    if (user != NULL) {
        struct luser *u = (struct luser *)map_find(&c->local, user->id);
        if (u == NULL) {
            if ((u = calloc(1, sizeof(*u))) == NULL || (u->n.key = strdup(user->id)) == NULL ||
                map_add(&c->local, &u->n) != 0) {
                if (u != NULL)
                    free(u->n.key);
                free(u);
                free(e);
                goto Fail;
            }
            u->name = name_copy(user->name);
            u->c = c;
            if ((long long)c->admitted < p->max_users)
                admit(p, c, u);
            else
                h2o_linklist_insert(&c->waiting, &u->wait);
        }
        if (u->tabs == 0 && u->left_at != 0) { /* back within its grace: nobody saw it leave */
            h2o_linklist_unlink(&u->grace);
            u->left_at = 0;
        }
        u->tabs++;
        e->u = u;
    }
    c->local_count++;
    h2o_linklist_insert(&p->entries, &e->link);
    return e;
Fail:
    if (c != NULL)
        chan_gc(p, c);
    return NULL;
}

void sl_presence_leave(sl_presence_entry_t *e)
{
    if (e == NULL)
        return;
    sl_presence_t *p = e->p;
    struct chan *c = e->c;
    struct luser *u = e->u;
    h2o_linklist_unlink(&e->link);
    free(e);
    c->local_count--;
    if (u != NULL && --u->tabs == 0) {
        u->left_at = clock_ms(p);
        if (u->left_at == 0)
            u->left_at = 1; /* 0 means "not in grace" */
        h2o_linklist_insert(&p->graces, &u->grace);
    }
    chan_gc(p, c);
}

static void expire_graces(sl_presence_t *p, uint64_t now)
{
    while (!h2o_linklist_is_empty(&p->graces)) {
        struct luser *u = H2O_STRUCT_FROM_MEMBER(struct luser, grace, p->graces.next);
        if (u->left_at + (uint64_t)p->grace_ms > now)
            break;
        h2o_linklist_unlink(&u->grace);
        remove_luser(p, u);
    }
}

/* ---- listeners ------------------------------------------------------------------------------- */

sl_presence_listener_t *sl_presence_listen(sl_presence_t *p, const char *channel, sl_presence_cb cb, void *data)
{
    struct chan *c = NULL;
    if (channel != NULL && (c = chan_get(p, channel)) == NULL)
        return NULL;
    sl_presence_listener_t *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        if (c != NULL)
            chan_gc(p, c);
        return NULL;
    }
    l->p = p;
    l->c = c;
    l->cb = cb;
    l->data = data;
    h2o_linklist_insert(c != NULL ? &c->listeners : &p->all_listeners, &l->link);
    return l;
}

static void free_listener(sl_presence_listener_t *l)
{
    sl_presence_t *p = l->p;
    struct chan *c = l->c;
    h2o_linklist_unlink(&l->link);
    free(l);
    if (c != NULL)
        chan_gc(p, c);
}

void sl_presence_unlisten(sl_presence_listener_t *l)
{
    if (l == NULL || l->dead)
        return;
    if (l->p->dispatching) { /* the dispatch walks the lists: unlink after it */
        l->dead = 1;
        l->next_dead = l->p->dead;
        l->p->dead = l;
        return;
    }
    free_listener(l);
}

static void call_listeners(h2o_linklist_t *anchor, const sl_presence_event_t *ev)
{
    /* dead listeners stay linked until the dispatch ends, so the walk is safe; one added by a
     * callback is at the tail and sees the rest of this dispatch */
    for (h2o_linklist_t *n = anchor->next; n != anchor; n = n->next) {
        sl_presence_listener_t *l = H2O_STRUCT_FROM_MEMBER(sl_presence_listener_t, link, n);
        if (!l->dead)
            l->cb(l->data, ev);
    }
}

static void dispatch(sl_presence_t *p)
{
    for (int round = 0; p->nevents > 0 && round < MAX_EVENT_ROUNDS; round++) {
        struct pevent *evs = p->events;
        size_t n = p->nevents;
        p->events = NULL;
        p->nevents = p->capevents = 0;
        p->dispatching++;
        for (size_t i = 0; i < n; i++) {
            sl_presence_event_t ev = {evs[i].type, evs[i].channel, {evs[i].id, evs[i].name}};
            struct chan *c = chan_find(p, evs[i].channel);
            if (c != NULL)
                call_listeners(&c->listeners, &ev);
            call_listeners(&p->all_listeners, &ev);
        }
        p->dispatching--;
        for (size_t i = 0; i < n; i++) {
            free(evs[i].channel);
            free(evs[i].id);
            free(evs[i].name);
        }
        free(evs);
        while (p->dead != NULL) {
            sl_presence_listener_t *l = p->dead;
            p->dead = l->next_dead;
            free_listener(l);
        }
    }
    if (p->nevents > 0)
        schedule(p);
}

/* ---- other instances ------------------------------------------------------------------------- */

static void free_rchan(struct rchan *r)
{
    for (size_t i = 0; i < r->nusers; i++) {
        free(r->users[i].id);
        free(r->users[i].name);
    }
    free(r->users);
    free(r->n.key);
    free(r);
}

/* Takes what an applied snapshot put in the channels away (users, counts), and frees it. */
static void release_rchans(sl_presence_t *p, struct map *m)
{
    MAP_EACH(m, x) {
        struct rchan *r = (struct rchan *)x;
        struct chan *c = r->c;
        if (c != NULL) {
            c->remote_refs--;
            c->remote_count -= r->count;
            c->remote_truncated -= r->truncated != 0;
            for (size_t i = 0; i < r->nusers; i++)
                agg_remove(p, c, r->users[i].id);
        }
        free_rchan(r);
        if (c != NULL)
            chan_gc(p, c);
    }
    map_free(m);
}

static void free_pending(struct map *m)
{
    MAP_EACH(m, x)
    free_rchan((struct rchan *)x);
    map_free(m);
}

static void drop_pending(struct inst *in)
{
    free_pending(&in->pend);
    in->pending = 0;
}

static void free_inst(sl_presence_t *p, struct inst *in)
{
    release_rchans(p, &in->chans);
    free_pending(&in->pend);
    map_del(&p->insts, &in->n);
    free(in->n.key);
    free(in->name);
    free(in);
}

static void expire_insts(sl_presence_t *p, uint64_t now)
{
    MAP_EACH(&p->insts, x) {
        struct inst *in = (struct inst *)x;
        if (in->last_seen + in->ttl_ms > now)
            continue;
        char q[300];
        SL_INFO("event=presence_instance_expired instance=%s boot=%s silent_ms=%llu",
                sl_log_quote(q, sizeof(q), in->name), in->n.key, (unsigned long long)(now - in->last_seen));
        p->stats.instances_expired++;
        free_inst(p, in);
    }
}

/* The assembled round becomes in's snapshot: its users join the union before the previous
 * snapshot's leave it, so a user listed in both never leaves. */
static void apply_round(sl_presence_t *p, struct inst *in, uint64_t round, uint64_t ttl_ms)
{
    struct map old = in->chans;
    in->chans = in->pend;
    memset(&in->pend, 0, sizeof(in->pend));
    in->pending = 0;
    MAP_EACH(&in->chans, x) {
        struct rchan *r = (struct rchan *)x;
        if ((r->c = chan_get(p, r->n.key)) == NULL)
            continue; /* out of memory: left out */
        r->c->remote_refs++;
        r->c->remote_count += r->count;
        r->c->remote_truncated += r->truncated != 0;
        for (size_t i = 0; i < r->nusers; i++)
            agg_add(p, r->c, r->users[i].id, r->users[i].name);
    }
    release_rchans(p, &old);
    if (!in->has_round) {
        char q[300];
        SL_INFO("event=presence_instance_seen instance=%s boot=%s ttl_ms=%llu", sl_log_quote(q, sizeof(q), in->name),
                in->n.key, (unsigned long long)ttl_ms);
    }
    in->has_round = 1;
    in->round = round;
    in->ttl_ms = ttl_ms;
    in->last_seen = clock_ms(p);
    p->stats.rounds_received++;
}

static int get_uint(json_t *o, const char *key, unsigned long long max, unsigned long long *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (unsigned long long)json_integer_value(v) > max)
        return -1;
    *out = (unsigned long long)json_integer_value(v);
    return 0;
}

/* Adds the channels of a part to in's round being assembled. Returns 0, or -1 when malformed. */
static int take_channels(sl_presence_t *p, struct inst *in, json_t *channels)
{
    size_t i, k;
    json_t *ch;
    json_array_foreach(channels, i, ch) {
        json_t *name = json_object_get(ch, "channel"), *users = json_object_get(ch, "users"),
               *trunc = json_object_get(ch, "truncated"), *u;
        unsigned long long count;
        if (!json_is_string(name) || !sl_channel_valid(json_string_value(name), json_string_length(name)) ||
            get_uint(ch, "count", 1000000000ULL, &count) != 0 || (users != NULL && !json_is_array(users)) ||
            (trunc != NULL && !json_is_boolean(trunc)))
            return -1;
        struct rchan *r = (struct rchan *)map_find(&in->pend, json_string_value(name));
        if (r == NULL) {
            if ((r = calloc(1, sizeof(*r))) == NULL || (r->n.key = strdup(json_string_value(name))) == NULL ||
                map_add(&in->pend, &r->n) != 0) {
                if (r != NULL)
                    free(r->n.key);
                free(r);
                return -1;
            }
        }
        r->count += (long long)count;
        r->truncated |= json_is_true(trunc);
        json_array_foreach(users, k, u) {
            json_t *id = json_array_get(u, 0), *nm = json_array_get(u, 1);
            if (!json_is_array(u) || json_array_size(u) > 2 || !json_is_string(id) ||
                !id_valid(json_string_value(id), json_string_length(id)) || (nm != NULL && !json_is_string(nm)))
                return -1;
            if ((long long)r->nusers >= p->max_users) {
                r->truncated = 1;
                continue;
            }
            if (r->nusers == r->capusers) {
                size_t cap = r->capusers != 0 ? r->capusers * 2 : 8;
                struct ruser *nu = realloc(r->users, cap * sizeof(*nu));
                if (nu == NULL)
                    return -1;
                r->users = nu;
                r->capusers = cap;
            }
            struct ruser *ru = &r->users[r->nusers];
            if ((ru->id = strdup(json_string_value(id))) == NULL)
                return -1;
            ru->name = nm != NULL ? name_copy(json_string_value(nm)) : NULL;
            r->nusers++;
        }
    }
    return 0;
}

void sl_presence_receive(sl_presence_t *p, const char *body, size_t len)
{
    json_t *root = json_loadb(body, len, 0, NULL), *boot, *instance, *channels, *last;
    unsigned long long v, round, part, ttl_ms;
    struct inst *in = NULL;
    if (root == NULL)
        goto Drop;
    boot = json_object_get(root, "boot");
    instance = json_object_get(root, "instance");
    channels = json_object_get(root, "channels");
    last = json_object_get(root, "last");
    if (get_uint(root, "v", 1, &v) != 0 || v != 1 || !json_is_string(boot) || json_string_length(boot) == 0 ||
        json_string_length(boot) > 64 || !json_is_string(instance) || json_string_length(instance) > 256 ||
        get_uint(root, "round", UINT64_MAX >> 1, &round) != 0 || get_uint(root, "part", 1000000, &part) != 0 ||
        get_uint(root, "ttl_ms", 86400000ULL, &ttl_ms) != 0 || ttl_ms == 0 || !json_is_array(channels) ||
        !json_is_boolean(last))
        goto Drop;
    if (strcmp(json_string_value(boot), p->boot) == 0) { /* our own, back through the fanout */
        json_decref(root);
        return;
    }
    if ((in = (struct inst *)map_find(&p->insts, json_string_value(boot))) == NULL) {
        if ((in = calloc(1, sizeof(*in))) == NULL || (in->n.key = strdup(json_string_value(boot))) == NULL ||
            (in->name = strdup(json_string_value(instance))) == NULL || map_add(&p->insts, &in->n) != 0) {
            if (in != NULL) {
                free(in->n.key);
                free(in->name);
            }
            free(in);
            goto Drop;
        }
        in->last_seen = clock_ms(p); /* one that never completes a round goes after its TTL too */
        in->ttl_ms = ttl_ms;
    }
    if (in->has_round && round <= in->round)
        goto Drop; /* older than the snapshot held */
    if (part == 0) {
        drop_pending(in);
        in->pending = 1;
        in->pend_round = round;
        in->pend_next = 0;
    } else if (!in->pending || in->pend_round != round || (long long)part != in->pend_next) {
        drop_pending(in); /* a part went missing: this round is lost, the next one will do */
        goto Drop;
    }
    if (take_channels(p, in, channels) != 0) {
        drop_pending(in);
        goto Drop;
    }
    in->pend_next++;
    if (json_is_true(last))
        apply_round(p, in, round, ttl_ms);
    json_decref(root);
    return;
Drop:
    p->stats.parts_dropped++;
    SL_DEBUG("event=presence_part_dropped bytes=%zu", len);
    json_decref(root);
}

/* ---- snapshots -------------------------------------------------------------------------------- */

struct builder {
    sl_presence_t *p;
    sl_buf_t *parts;
    size_t n, cap;
    size_t chans_in_part, users_in_chan;
    int in_chan;
};

static sl_buf_t *cur(struct builder *b)
{
    return &b->parts[b->n - 1];
}

static int part_open(struct builder *b)
{
    if (b->n == b->cap) {
        size_t cap = b->cap != 0 ? b->cap * 2 : 4;
        sl_buf_t *np = realloc(b->parts, cap * sizeof(*np));
        if (np == NULL)
            return -1;
        b->parts = np;
        b->cap = cap;
    }
    sl_buf_t *s = &b->parts[b->n++];
    memset(s, 0, sizeof(*s));
    sl_buf_appendf(s, "{\"v\":1,\"boot\":\"%s\",\"instance\":", b->p->boot);
    sl_buf_append_json_string(s, b->p->instance);
    sl_buf_appendf(s, ",\"round\":%llu,\"part\":%zu,\"ttl_ms\":%lld,\"channels\":[", (unsigned long long)b->p->round,
                   b->n - 1, b->p->ttl_ms);
    b->chans_in_part = 0;
    b->in_chan = 0;
    return 0;
}

static void chan_close(struct builder *b)
{
    if (b->in_chan)
        sl_buf_appends(cur(b), "]}");
    b->in_chan = 0;
}

static void part_close(struct builder *b, int last)
{
    chan_close(b);
    sl_buf_appends(cur(b), last ? "],\"last\":true}" : "],\"last\":false}");
}

static int chan_open(struct builder *b, const char *name, long long count, int truncated)
{
    sl_buf_t head = SL_BUF_INIT;
    sl_buf_appends(&head, "{\"channel\":");
    sl_buf_append_json_string(&head, name);
    sl_buf_appendf(&head, ",\"count\":%lld,\"truncated\":%s,\"users\":[", count, truncated ? "true" : "false");
    if (b->chans_in_part > 0 && cur(b)->len + head.len + 1 + CLOSE_RESERVE > b->p->part_bytes) {
        part_close(b, 0);
        if (part_open(b) != 0) {
            sl_buf_free(&head);
            return -1;
        }
    }
    if (b->chans_in_part > 0)
        sl_buf_append(cur(b), ",", 1);
    sl_buf_append(cur(b), head.data, head.len);
    sl_buf_free(&head);
    b->chans_in_part++;
    b->users_in_chan = 0;
    b->in_chan = 1;
    return 0;
}

static int add_user(struct builder *b, const char *channel, int truncated, const struct luser *u)
{
    sl_buf_t item = SL_BUF_INIT;
    sl_buf_appends(&item, "[");
    sl_buf_append_json_string(&item, u->n.key);
    if (u->name != NULL) {
        sl_buf_appends(&item, ",");
        sl_buf_append_json_string(&item, u->name);
    }
    sl_buf_appends(&item, "]");
    if (b->users_in_chan > 0 && cur(b)->len + item.len + 1 + CLOSE_RESERVE > b->p->part_bytes) {
        /* the channel goes on in the next part, its count already given */
        part_close(b, 0);
        if (part_open(b) != 0 || chan_open(b, channel, 0, truncated) != 0) {
            sl_buf_free(&item);
            return -1;
        }
    }
    if (b->users_in_chan > 0)
        sl_buf_append(cur(b), ",", 1);
    sl_buf_append(cur(b), item.data, item.len);
    sl_buf_free(&item);
    b->users_in_chan++;
    return 0;
}

static void free_parts(sl_presence_t *p)
{
    for (size_t i = 0; i < p->nparts; i++)
        sl_buf_free(&p->parts[i]);
    free(p->parts);
    p->parts = NULL;
    p->nparts = p->next_part = 0;
}

/* This instance's state as the parts of round p->round. Returns 0, or -1 on no memory. */
static int build_parts(sl_presence_t *p)
{
    struct builder b = {p, NULL, 0, 0, 0, 0, 0};
    if (part_open(&b) != 0)
        goto Fail;
    MAP_EACH(&p->chans, x) {
        struct chan *c = (struct chan *)x;
        if (c->local_count == 0 && c->local.n == 0)
            continue;
        int truncated = !h2o_linklist_is_empty(&c->waiting);
        if (chan_open(&b, c->n.key, c->local_count, truncated) != 0)
            goto Fail;
        MAP_EACH(&c->local, y) {
            struct luser *u = (struct luser *)y;
            if (u->admitted && add_user(&b, c->n.key, truncated, u) != 0)
                goto Fail;
        }
        chan_close(&b);
    }
    part_close(&b, 1);
    p->parts = b.parts;
    p->nparts = b.n;
    p->next_part = 0;
    return 0;
Fail:
    for (size_t i = 0; i < b.n; i++)
        sl_buf_free(&b.parts[i]);
    free(b.parts);
    return -1;
}

/* Offers the parts left of the round; best_effort: a part without room is dropped (flush). */
static void push_parts(sl_presence_t *p, int best_effort)
{
    while (p->next_part < p->nparts) {
        sl_buf_t *part = &p->parts[p->next_part];
        int r = p->send(p->send_data, part->data, part->len, p->heartbeat_ms);
        if (r == SL_PRESENCE_SENT) {
            p->stats.parts_sent++;
            p->stats.bytes_sent += part->len;
            p->next_part++;
            continue;
        }
        if (r == SL_PRESENCE_BUSY && !best_effort) {
            if (p->loop != NULL && !h2o_timeout_is_linked(&p->retry))
                h2o_timeout_link(p->loop, &p->retry_timeout, &p->retry);
            return;
        }
        p->stats.rounds_failed++;
        free_parts(p);
        return;
    }
    if (p->nparts > 0)
        p->stats.rounds_sent++;
    free_parts(p);
}

static void send_round(sl_presence_t *p, uint64_t now, int best_effort)
{
    p->started = 1;
    p->changed = 0;
    p->send_now = 0;
    p->last_round_at = now;
    if (p->send == NULL)
        return;
    if (p->next_part < p->nparts) /* the last round still waits for room: this one replaces it */
        p->stats.rounds_failed++;
    free_parts(p);
    p->round++;
    if (build_parts(p) != 0) {
        p->stats.rounds_failed++;
        return;
    }
    push_parts(p, best_effort);
}

void sl_presence_run(sl_presence_t *p, uint64_t now_ms)
{
    if (p->loop == NULL && now_ms > p->now)
        p->now = now_ms;
    uint64_t now = clock_ms(p);
    expire_graces(p, now);
    expire_insts(p, now);
    if (p->next_part < p->nparts)
        push_parts(p, 0);
    if (!p->started || p->send_now || now >= p->last_round_at + (uint64_t)p->heartbeat_ms ||
        (p->changed && now >= p->last_round_at + (uint64_t)p->min_interval_ms))
        send_round(p, now, 0);
    else if (p->changed && p->loop != NULL && !h2o_timeout_is_linked(&p->later)) /* not the tick: sooner */
        h2o_timeout_link(p->loop, &p->later_timeout, &p->later);
    dispatch(p);
}

void sl_presence_connected(sl_presence_t *p)
{
    p->send_now = 1;
    schedule(p);
}

void sl_presence_flush(sl_presence_t *p)
{
    send_round(p, clock_ms(p), 1);
}

static void on_tick(h2o_timeout_entry_t *entry)
{
    sl_presence_t *p = H2O_STRUCT_FROM_MEMBER(sl_presence_t, tick, entry);
    h2o_timeout_link(p->loop, &p->tick_timeout, &p->tick);
    sl_presence_run(p, 0);
}

static void on_soon(h2o_timeout_entry_t *entry)
{
    sl_presence_run(H2O_STRUCT_FROM_MEMBER(sl_presence_t, soon, entry), 0);
}

static void on_retry(h2o_timeout_entry_t *entry)
{
    sl_presence_run(H2O_STRUCT_FROM_MEMBER(sl_presence_t, retry, entry), 0);
}

static void on_later(h2o_timeout_entry_t *entry)
{
    sl_presence_run(H2O_STRUCT_FROM_MEMBER(sl_presence_t, later, entry), 0);
}

/* ---- queries ---------------------------------------------------------------------------------- */

long long sl_presence_occupancy(const sl_presence_t *p, const char *channel)
{
    const struct chan *c = chan_find(p, channel);
    return c != NULL ? c->local_count + c->remote_count : 0;
}

size_t sl_presence_each_user(const sl_presence_t *p, const char *channel,
                             void (*cb)(void *data, const sl_presence_user_t *user), void *data, int *truncated)
{
    const struct chan *c = chan_find(p, channel);
    if (truncated != NULL)
        *truncated = c != NULL && chan_truncated(p, c);
    if (c == NULL)
        return 0;
    MAP_EACH(&c->agg, x) {
        struct auser *a = (struct auser *)x;
        sl_presence_user_t u = {a->n.key, a->name};
        cb(data, &u);
    }
    return c->agg.n;
}

void sl_presence_each_channel(const sl_presence_t *p, void (*cb)(void *data, const char *channel, long long occupancy),
                              void *data)
{
    MAP_EACH(&p->chans, x) {
        struct chan *c = (struct chan *)x;
        if (c->local_count + c->remote_count > 0)
            cb(data, c->n.key, c->local_count + c->remote_count);
    }
}

long long sl_presence_max_users(const sl_presence_t *p)
{
    return p->max_users;
}

const char *sl_presence_boot_id(const sl_presence_t *p)
{
    return p->boot;
}

const sl_presence_stats_t *sl_presence_stats(sl_presence_t *p)
{
    sl_presence_stats_t *s = &p->stats;
    s->channels = s->occupancy = s->users = s->truncated = 0;
    MAP_EACH(&p->chans, x) {
        struct chan *c = (struct chan *)x;
        s->channels += c->local_count > 0 || c->local.n > 0;
        s->occupancy += (uint64_t)c->local_count;
        s->users += c->local.n;
        s->truncated += chan_truncated(p, c);
    }
    s->instances = p->insts.n;
    return s;
}

/* ---- life --------------------------------------------------------------------------------------- */

sl_presence_t *sl_presence_create(h2o_loop_t *loop, const sl_presence_conf_t *conf)
{
    long long hb = conf->heartbeat_ms > 0 ? conf->heartbeat_ms : 2000;
    long long ttl = conf->ttl_ms > 0 ? conf->ttl_ms : 3 * hb;
    if (hb < 10 || ttl <= hb)
        return NULL;
    sl_presence_t *p = calloc(1, sizeof(*p));
    unsigned char rnd[8];
    if (p == NULL)
        return NULL;
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd) ||
        (p->instance = strdup(conf->instance != NULL ? conf->instance : "")) == NULL) {
        free(p);
        return NULL;
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(p->boot + 2 * i, 3, "%02x", rnd[i]);
    p->loop = loop;
    p->heartbeat_ms = hb;
    p->ttl_ms = ttl;
    p->grace_ms = conf->grace_ms > 0 ? conf->grace_ms : hb;
    p->max_users = conf->max_users > 0 ? conf->max_users : 1000;
    p->min_interval_ms = hb / 10;
    p->part_bytes = conf->part_bytes > 0 ? conf->part_bytes : SL_PRESENCE_PART_BYTES;
    if (p->part_bytes < PART_BYTES_MIN)
        p->part_bytes = PART_BYTES_MIN;
    p->send = conf->send;
    p->send_data = conf->send_data;
    h2o_linklist_init_anchor(&p->graces);
    h2o_linklist_init_anchor(&p->all_listeners);
    h2o_linklist_init_anchor(&p->entries);
    if (loop != NULL) {
        long long tick = hb / 8 < 5 ? 5 : hb / 8 > 1000 ? 1000 : hb / 8;
        h2o_timeout_init(loop, &p->tick_timeout, (uint64_t)tick);
        h2o_timeout_init(loop, &p->soon_timeout, 0);
        h2o_timeout_init(loop, &p->retry_timeout, RETRY_MS);
        h2o_timeout_init(loop, &p->later_timeout, (uint64_t)p->min_interval_ms);
        p->tick.cb = on_tick;
        p->soon.cb = on_soon;
        p->retry.cb = on_retry;
        p->later.cb = on_later;
        h2o_timeout_link(loop, &p->tick_timeout, &p->tick);
        schedule(p); /* the first snapshot */
    }
    return p;
}

void sl_presence_destroy(sl_presence_t *p)
{
    if (p == NULL)
        return;
    if (p->loop != NULL) {
        h2o_timeout_entry_t *entries[] = {&p->tick, &p->soon, &p->retry, &p->later};
        for (size_t i = 0; i < 4; i++) {
            if (h2o_timeout_is_linked(entries[i]))
                h2o_timeout_unlink(entries[i]);
        }
        h2o_timeout_dispose(p->loop, &p->tick_timeout);
        h2o_timeout_dispose(p->loop, &p->soon_timeout);
        h2o_timeout_dispose(p->loop, &p->retry_timeout);
        h2o_timeout_dispose(p->loop, &p->later_timeout);
    }
    free_parts(p);
    while (!h2o_linklist_is_empty(&p->entries)) {
        h2o_linklist_t *n = p->entries.next;
        h2o_linklist_unlink(n);
        free(H2O_STRUCT_FROM_MEMBER(sl_presence_entry_t, link, n));
    }
    MAP_EACH(&p->insts, x) {
        struct inst *in = (struct inst *)x;
        MAP_EACH(&in->chans, y)
        free_rchan((struct rchan *)y);
        map_free(&in->chans);
        free_pending(&in->pend);
        free(in->n.key);
        free(in->name);
        free(in);
    }
    map_free(&p->insts);
    MAP_EACH(&p->chans, x) {
        struct chan *c = (struct chan *)x;
        MAP_EACH(&c->local, y) {
            struct luser *u = (struct luser *)y;
            free(u->n.key);
            free(u->name);
            free(u);
        }
        MAP_EACH(&c->agg, y) {
            struct auser *a = (struct auser *)y;
            free(a->n.key);
            free(a->name);
            free(a);
        }
        while (!h2o_linklist_is_empty(&c->listeners)) {
            h2o_linklist_t *n = c->listeners.next;
            h2o_linklist_unlink(n);
            free(H2O_STRUCT_FROM_MEMBER(sl_presence_listener_t, link, n));
        }
        map_free(&c->local);
        map_free(&c->agg);
        free(c->n.key);
        free(c);
    }
    map_free(&p->chans);
    while (!h2o_linklist_is_empty(&p->all_listeners)) {
        h2o_linklist_t *n = p->all_listeners.next;
        h2o_linklist_unlink(n);
        free(H2O_STRUCT_FROM_MEMBER(sl_presence_listener_t, link, n));
    }
    for (size_t i = 0; i < p->nevents; i++) {
        free(p->events[i].channel);
        free(p->events[i].id);
        free(p->events[i].name);
    }
    free(p->events);
    free(p->instance);
    free(p);
}
