/* Exercises every function of include/sandcell.h, every error path, and concurrent runs from
 * several threads. Run by tests/all/c_api.rs, directly and under valgrind.
 *
 *   test_api [--backends wasm,process,microvm]
 *
 * Backends not named are not tried; a named backend this host lacks (sandcell_sandbox_new fails
 * with SANDCELL_ERROR_BACKEND_UNAVAILABLE) is reported as skipped on stdout ("SKIP backend: why").
 * Exit status 0 when every check passed.
 */
#include <sandcell.h>

#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                                 \
    do {                                                                            \
        checks++;                                                                   \
        if (!(cond)) {                                                              \
            failures++;                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                           \
    } while (0)

/* The call must succeed. */
#define OK(call)                                                                                \
    do {                                                                                        \
        sandcell_error_t *e_ = (call);                                                          \
        checks++;                                                                               \
        if (e_ != NULL) {                                                                       \
            failures++;                                                                         \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,                \
                    sandcell_error_message(e_));                                                \
            sandcell_error_free(e_);                                                            \
        }                                                                                       \
    } while (0)

/* The call must fail with `kind`, and its message must mention `needle`. */
#define FAILS(call, kind, needle)                                                               \
    do {                                                                                        \
        sandcell_error_t *e_ = (call);                                                          \
        checks++;                                                                               \
        if (e_ == NULL) {                                                                       \
            failures++;                                                                         \
            fprintf(stderr, "%s:%d: %s succeeded, expected error kind %d\n", __FILE__, __LINE__, \
                    #call, kind);                                                               \
        } else {                                                                                \
            const char *m_ = sandcell_error_message(e_);                                        \
            if (sandcell_error_kind(e_) != (kind) || strstr(m_, needle) == NULL) {              \
                failures++;                                                                     \
                fprintf(stderr, "%s:%d: %s: kind %u message `%s`, expected kind %d and `%s`\n", \
                        __FILE__, __LINE__, #call, sandcell_error_kind(e_), m_, kind, needle);  \
            }                                                                                   \
            sandcell_error_free(e_);                                                            \
        }                                                                                       \
    } while (0)

/* ------------------------------------------------------------------------------------------ */
/* Guests (WebAssembly text; the wasm and micro-VM backends accept it). */

#define WASI(name, params) \
    "(import \"wasi_snapshot_preview1\" \"" name "\" (func $" name " (param " params ") (result i32)))"

static const char *HELLO =
    "(module " WASI("fd_write", "i32 i32 i32 i32")
    "  (memory (export \"memory\") 1)"
    "  (data (i32.const 16) \"Hello, world!\\n\")"
    "  (func (export \"_start\")"
    "    (i32.store (i32.const 0) (i32.const 16))"
    "    (i32.store (i32.const 4) (i32.const 14))"
    "    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))";

/* Copies stdin to stdout, then writes "err" to stderr. */
static const char *CAT =
    "(module " WASI("fd_read", "i32 i32 i32 i32") WASI("fd_write", "i32 i32 i32 i32")
    "  (memory (export \"memory\") 1)"
    "  (data (i32.const 64) \"err\")"
    "  (func (export \"_start\")"
    "    (block $done (loop $l"
    "      (i32.store (i32.const 0) (i32.const 1024))"
    "      (i32.store (i32.const 4) (i32.const 4096))"
    "      (br_if $done (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))"
    "      (br_if $done (i32.eqz (i32.load (i32.const 8))))"
    "      (i32.store (i32.const 4) (i32.load (i32.const 8)))"
    "      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 12)))"
    "      (br $l)))"
    "    (i32.store (i32.const 16) (i32.const 64))"
    "    (i32.store (i32.const 20) (i32.const 3))"
    "    (drop (call $fd_write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 24)))))";

static const char *EXIT3 =
    "(module (import \"wasi_snapshot_preview1\" \"proc_exit\" (func $exit (param i32)))"
    "  (memory (export \"memory\") 1)"
    "  (func (export \"_start\") (call $exit (i32.const 3))))";

static const char *TRAP = "(module (memory (export \"memory\") 1) (func (export \"_start\") unreachable))";

static const char *SPIN = "(module (memory (export \"memory\") 1) (func (export \"_start\") (loop $l (br $l))))";

/* Writes "go\n" to stdout, then spins. */
static const char *GO_SPIN =
    "(module " WASI("fd_write", "i32 i32 i32 i32")
    "  (memory (export \"memory\") 1)"
    "  (data (i32.const 16) \"go\\n\")"
    "  (func (export \"_start\")"
    "    (i32.store (i32.const 0) (i32.const 16))"
    "    (i32.store (i32.const 4) (i32.const 3))"
    "    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))"
    "    (loop $l (br $l))))";

/* Writes 4 KiB to stdout forever. */
static const char *FLOOD =
    "(module " WASI("fd_write", "i32 i32 i32 i32")
    "  (memory (export \"memory\") 1)"
    "  (func (export \"_start\")"
    "    (i32.store (i32.const 0) (i32.const 1024))"
    "    (i32.store (i32.const 4) (i32.const 4096))"
    "    (loop $l (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l))))";

/* Grows memory by 1 GiB; traps if refused. */
static const char *GROW =
    "(module (memory (export \"memory\") 1)"
    "  (func (export \"_start\")"
    "    (if (i32.eq (memory.grow (i32.const 16384)) (i32.const -1)) (then unreachable))))";

/* An export that adds its two parameters (called through sandcell_program_set_entry). */
static const char *ADD =
    "(module (func (export \"add\") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))";

/* Prints its environment variable GREETING (via environ_get) — checked by the output only. */
static const char *ENV =
    "(module " WASI("environ_sizes_get", "i32 i32") WASI("environ_get", "i32 i32") WASI("fd_write", "i32 i32 i32 i32")
    "  (memory (export \"memory\") 1)"
    "  (func (export \"_start\")"
    "    (drop (call $environ_sizes_get (i32.const 0) (i32.const 4)))"
    "    (drop (call $environ_get (i32.const 256) (i32.const 1024)))"
    "    (i32.store (i32.const 8) (i32.const 1024))"
    "    (i32.store (i32.const 12) (i32.sub (i32.load (i32.const 4)) (i32.const 1)))"
    "    (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 16)))))";

/* ------------------------------------------------------------------------------------------ */
/* Helpers. */

static sandcell_program_t *wat(const char *text) {
    sandcell_program_t *p = NULL;
    OK(sandcell_program_from_bytes((const uint8_t *)text, strlen(text), &p));
    return p;
}

static sandcell_policy_t *policy_with(uint64_t memory, uint64_t timeout_ms) {
    sandcell_policy_t *p = NULL;
    OK(sandcell_policy_new(&p));
    OK(sandcell_policy_set_memory(p, memory));
    OK(sandcell_policy_set_timeout_ms(p, timeout_ms));
    return p;
}

/* Runs and returns the outcome (NULL on error, counted as a failure). */
static sandcell_outcome_t *run(const sandcell_sandbox_t *sb, const sandcell_program_t *p,
                               const sandcell_run_options_t *o) {
    sandcell_outcome_t *out = NULL;
    OK(sandcell_sandbox_run(sb, p, o, &out));
    return out;
}

static uint32_t status_of(const sandcell_outcome_t *o, int32_t *code) {
    uint32_t s = 0;
    int32_t c = -1;
    OK(sandcell_outcome_status(o, &s, &c));
    if (code) *code = c;
    return s;
}

static int output_is(const sandcell_outcome_t *o, uint32_t stream, const char *expected) {
    const uint8_t *data = NULL;
    size_t len = 0;
    OK(sandcell_outcome_output(o, stream, &data, &len));
    if (len != strlen(expected) || (len && memcmp(data, expected, len) != 0)) {
        fprintf(stderr, "output %u: got %zu bytes `%.*s`, expected `%s`\n", stream, len, (int)(len > 200 ? 200 : len),
                data ? (const char *)data : "", expected);
        return 0;
    }
    return 1;
}

static const char *kind_of(const sandcell_outcome_t *o) {
    const char *k = NULL;
    OK(sandcell_outcome_kind(o, &k));
    return k ? k : "(null)";
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------------------------ */
/* Errors, strings, version, probe. */

static void test_basics(void) {
    const char *v = sandcell_version();
    CHECK(v != NULL && strchr(v, '.') != NULL);
    /* The header's version is the library's; so is its ABI version. */
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", SANDCELL_VERSION_MAJOR, SANDCELL_VERSION_MINOR,
             SANDCELL_VERSION_PATCH);
    CHECK(v != NULL && strcmp(v, expected) == 0);
    CHECK(sandcell_abi_version() == SANDCELL_ABI_VERSION);

    CHECK(strcmp(sandcell_error_message(NULL), "(no error: NULL)") == 0);
    CHECK(sandcell_error_kind(NULL) == 0);
    sandcell_error_free(NULL);
    sandcell_string_free(NULL);

    /* An error used after it was freed is detected, and a double free is ignored. */
    sandcell_error_t *e = sandcell_policy_new(NULL);
    CHECK(e != NULL && sandcell_error_kind(e) == SANDCELL_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(sandcell_error_message(e), "policy") != NULL);
    sandcell_error_free(e);
    CHECK(sandcell_error_kind(e) == 0);
    CHECK(strstr(sandcell_error_message(e), "not a live") != NULL);
    sandcell_error_free(e);

    char *json = NULL;
    OK(sandcell_probe_json(&json));
    CHECK(json != NULL && strstr(json, "\"wasm\"") != NULL);
    sandcell_string_free(json);
    sandcell_string_free(json); /* double free: ignored */
    FAILS(sandcell_probe_json(NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "json");
}

/* ------------------------------------------------------------------------------------------ */
/* Policies. */

/* Whether the policy's JSON contains `needle`. */
static int policy_json_has(const sandcell_policy_t *p, const char *needle) {
    char *json = NULL;
    OK(sandcell_policy_to_json(p, &json));
    int found = json != NULL && strstr(json, needle) != NULL;
    if (!found) fprintf(stderr, "policy JSON lacks `%s`: %s\n", needle, json ? json : "(null)");
    sandcell_string_free(json);
    return found;
}

/* Every numeric setter: 0 is the default of a new policy, SANDCELL_UNLIMITED no limit, other
 * values themselves; the explicit zeros. */
static void test_policy_setters(void) {
    sandcell_policy_t *p = NULL;
    OK(sandcell_policy_new(&p));
    OK(sandcell_policy_set_memory(p, 1u << 20));
    OK(sandcell_policy_set_timeout_ms(p, 1500));
    OK(sandcell_policy_set_cpu_time_ms(p, 700));
    OK(sandcell_policy_set_fuel(p, 99));
    OK(sandcell_policy_set_cpus(p, 2));
    OK(sandcell_policy_set_max_processes(p, 5));
    OK(sandcell_policy_set_max_open_files(p, 17));
    OK(sandcell_policy_set_max_file_size(p, 4096));
    OK(sandcell_policy_set_max_output(p, 1000));
    CHECK(policy_json_has(p, "\"memory\":1048576"));
    CHECK(policy_json_has(p, "\"timeout\":\"1500ms\""));
    CHECK(policy_json_has(p, "\"fuel\":99"));
    CHECK(policy_json_has(p, "\"cpus\":2"));
    CHECK(policy_json_has(p, "\"max_processes\":5"));
    CHECK(policy_json_has(p, "\"max_open_files\":17"));
    CHECK(policy_json_has(p, "\"max_file_size\":4096"));
    CHECK(policy_json_has(p, "\"max_output\":1000"));

    /* 0: back to the defaults. */
    OK(sandcell_policy_set_memory(p, 0));
    OK(sandcell_policy_set_timeout_ms(p, 0));
    OK(sandcell_policy_set_cpu_time_ms(p, 0));
    OK(sandcell_policy_set_fuel(p, 0));
    OK(sandcell_policy_set_cpus(p, 0));
    OK(sandcell_policy_set_max_processes(p, 0));
    OK(sandcell_policy_set_max_open_files(p, 0));
    OK(sandcell_policy_set_max_file_size(p, 0));
    OK(sandcell_policy_set_max_output(p, 0));
    sandcell_policy_t *fresh = NULL;
    OK(sandcell_policy_new(&fresh));
    char *a = NULL, *b = NULL;
    OK(sandcell_policy_to_json(p, &a));
    OK(sandcell_policy_to_json(fresh, &b));
    CHECK(a && b && strcmp(a, b) == 0);
    sandcell_string_free(a);
    sandcell_string_free(b);
    sandcell_policy_free(fresh);
    CHECK(policy_json_has(p, "\"memory\":536870912"));
    CHECK(policy_json_has(p, "\"max_output\":16777216"));

    /* SANDCELL_UNLIMITED: no limit. */
    OK(sandcell_policy_set_memory(p, SANDCELL_UNLIMITED));
    OK(sandcell_policy_set_timeout_ms(p, SANDCELL_UNLIMITED));
    OK(sandcell_policy_set_max_processes(p, SANDCELL_UNLIMITED_U32));
    OK(sandcell_policy_set_max_open_files(p, SANDCELL_UNLIMITED));
    OK(sandcell_policy_set_max_output(p, SANDCELL_UNLIMITED));
    CHECK(policy_json_has(p, "\"memory\":null"));
    CHECK(policy_json_has(p, "\"timeout\":null"));
    CHECK(policy_json_has(p, "\"max_processes\":null"));
    CHECK(policy_json_has(p, "\"max_open_files\":null"));
    CHECK(policy_json_has(p, "\"max_output\":18446744073709551615"));
    OK(sandcell_policy_validate(p));

    /* A limit of exactly zero has its own call; JSON takes it as written. */
    OK(sandcell_policy_set_max_output_zero(p));
    OK(sandcell_policy_set_max_file_size_zero(p));
    CHECK(policy_json_has(p, "\"max_output\":0"));
    CHECK(policy_json_has(p, "\"max_file_size\":0"));
    OK(sandcell_policy_validate(p));
    sandcell_policy_t *q = NULL;
    OK(sandcell_policy_from_json("{\"max_output\": 0, \"max_file_size\": 0}", &q));
    CHECK(policy_json_has(q, "\"max_output\":0") && policy_json_has(q, "\"max_file_size\":0"));
    sandcell_policy_free(q);
    FAILS(sandcell_policy_set_max_output_zero(NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "policy");
    FAILS(sandcell_policy_set_max_file_size_zero(NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "policy");
    sandcell_policy_free(p);
}

static void test_policy(void) {
    sandcell_policy_t *p = NULL;
    OK(sandcell_policy_new(&p));
    OK(sandcell_policy_set_memory(p, 32u << 20));
    OK(sandcell_policy_set_timeout_ms(p, 1500));
    OK(sandcell_policy_set_cpu_time_ms(p, 1000));
    OK(sandcell_policy_set_fuel(p, 1000000));
    OK(sandcell_policy_set_cpus(p, 1));
    OK(sandcell_policy_set_max_processes(p, 8));
    OK(sandcell_policy_set_max_open_files(p, 32));
    OK(sandcell_policy_set_max_file_size(p, 1u << 20));
    OK(sandcell_policy_set_max_output(p, 4096));
    OK(sandcell_policy_set_best_effort(p, false));
    OK(sandcell_policy_set_network(p, SANDCELL_NETWORK_LOOPBACK));
    OK(sandcell_policy_set_network(p, SANDCELL_NETWORK_NONE));
    OK(sandcell_policy_add_mount(p, "/tmp", "/data", true));
    OK(sandcell_policy_set_env(p, "GREETING", "hello"));
    OK(sandcell_policy_deny_syscall(p, "uname"));
    const char *dirs[] = {"/usr", "/lib"};
    OK(sandcell_policy_set_system_dirs(p, dirs, 2));
    OK(sandcell_policy_set_system_dirs(p, NULL, 0));
    OK(sandcell_policy_default_system_dirs(p));
    OK(sandcell_policy_validate(p));

    /* JSON round trip. */
    char *json = NULL;
    OK(sandcell_policy_to_json(p, &json));
    CHECK(json != NULL && strstr(json, "\"GREETING\"") != NULL && strstr(json, "\"uname\"") != NULL);
    sandcell_policy_t *q = NULL;
    OK(sandcell_policy_from_json(json, &q));
    char *json2 = NULL;
    OK(sandcell_policy_to_json(q, &json2));
    CHECK(json2 != NULL && json != NULL && strcmp(json, json2) == 0);
    sandcell_string_free(json);
    sandcell_string_free(json2);
    sandcell_policy_free(q);

    /* Units in JSON, and the errors of a bad document. */
    OK(sandcell_policy_from_json("{\"memory\": \"64M\", \"timeout\": \"2s\", \"max_output\": \"1K\"}", &q));
    OK(sandcell_policy_to_json(q, &json));
    CHECK(json != NULL && strstr(json, "67108864") != NULL);
    sandcell_string_free(json);
    sandcell_policy_free(q);
    q = NULL;
    FAILS(sandcell_policy_from_json("{\"memroy\": 1}", &q), SANDCELL_ERROR_INVALID_POLICY, "memroy");
    FAILS(sandcell_policy_from_json("{\"memory\": \"lots\"}", &q), SANDCELL_ERROR_INVALID_POLICY, "memory");
    FAILS(sandcell_policy_from_json("[1, 2]", &q), SANDCELL_ERROR_INVALID_POLICY, "");
    FAILS(sandcell_policy_from_json("{", &q), SANDCELL_ERROR_INVALID_POLICY, "");
    FAILS(sandcell_policy_from_json("{\"memory\": 0}", &q), SANDCELL_ERROR_INVALID_POLICY, "memory");
    FAILS(sandcell_policy_from_json("{\"a\xff\": 1}", &q), SANDCELL_ERROR_INVALID_ARGUMENT, "UTF-8");
    FAILS(sandcell_policy_from_json(NULL, &q), SANDCELL_ERROR_INVALID_ARGUMENT, "json");
    FAILS(sandcell_policy_from_json("{}", NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "policy");
    CHECK(q == NULL); /* out-parameters are written only on success */

    /* Setters: bad values, NULL and freed handles, bad strings. */
    test_policy_setters();

    FAILS(sandcell_policy_set_network(p, 7), SANDCELL_ERROR_INVALID_ARGUMENT, "network");
    FAILS(sandcell_policy_set_memory(NULL, 1), SANDCELL_ERROR_INVALID_ARGUMENT, "policy");
    FAILS(sandcell_policy_add_mount(p, NULL, "/x", false), SANDCELL_ERROR_INVALID_ARGUMENT, "host_path");
    FAILS(sandcell_policy_add_mount(p, "/tmp", "\xc3\x28", false), SANDCELL_ERROR_INVALID_ARGUMENT, "UTF-8");
    FAILS(sandcell_policy_set_env(p, "K", NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "value");
    FAILS(sandcell_policy_deny_syscall(p, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "name");
    FAILS(sandcell_policy_set_system_dirs(p, NULL, 3), SANDCELL_ERROR_INVALID_ARGUMENT, "dirs");
    FAILS(sandcell_policy_set_system_dirs(p, dirs, SIZE_MAX), SANDCELL_ERROR_INVALID_ARGUMENT, "overflows");
    const char *bad_dirs[] = {"/usr", NULL};
    FAILS(sandcell_policy_set_system_dirs(p, bad_dirs, 2), SANDCELL_ERROR_INVALID_ARGUMENT, "dirs[1]");
    FAILS(sandcell_policy_to_json(p, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "json");
    FAILS(sandcell_policy_validate(NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "policy");

    /* validate() refuses what sandcell_sandbox_new would refuse. */
    OK(sandcell_policy_deny_syscall(p, "not_a_syscall"));
    FAILS(sandcell_policy_validate(p), SANDCELL_ERROR_INVALID_POLICY, "not_a_syscall");
    sandcell_sandbox_t *sb = NULL;
    FAILS(sandcell_sandbox_new("wasm", p, NULL, &sb), SANDCELL_ERROR_INVALID_POLICY, "not_a_syscall");
    CHECK(sb == NULL);

    sandcell_policy_free(p);
    /* Use after free and double free are detected. */
    FAILS(sandcell_policy_set_memory(p, 1), SANDCELL_ERROR_INVALID_ARGUMENT, "not a live policy");
    FAILS(sandcell_policy_validate(p), SANDCELL_ERROR_INVALID_ARGUMENT, "not a live policy");
    sandcell_policy_free(p);
    sandcell_policy_free(NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Programs. */

static void test_program(void) {
    sandcell_program_t *p = NULL;
    OK(sandcell_program_from_path("/does/not/exist.wasm", &p));
    OK(sandcell_program_add_arg(p, "one"));
    OK(sandcell_program_set_env(p, "K", "V"));
    OK(sandcell_program_set_stdin(p, (const uint8_t *)"in", 2));
    OK(sandcell_program_set_stdin(p, NULL, 0));
    OK(sandcell_program_set_cwd(p, "/"));
    OK(sandcell_program_set_entry(p, "main"));
    OK(sandcell_program_set_name(p, "prog"));
    FAILS(sandcell_program_set_name(p, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "name");
    FAILS(sandcell_program_add_arg(p, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "arg");
    FAILS(sandcell_program_add_arg(p, "\xff\xfe"), SANDCELL_ERROR_INVALID_ARGUMENT, "UTF-8");
    FAILS(sandcell_program_set_env(p, NULL, "v"), SANDCELL_ERROR_INVALID_ARGUMENT, "key");
    FAILS(sandcell_program_set_stdin(p, NULL, 5), SANDCELL_ERROR_INVALID_ARGUMENT, "data");
    FAILS(sandcell_program_set_stdin(p, (const uint8_t *)"x", SIZE_MAX), SANDCELL_ERROR_INVALID_ARGUMENT, "overflows");
    FAILS(sandcell_program_set_cwd(p, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "dir");
    FAILS(sandcell_program_set_entry(p, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "export_name");
    sandcell_program_free(p);
    FAILS(sandcell_program_add_arg(p, "x"), SANDCELL_ERROR_INVALID_ARGUMENT, "not a live program");
    sandcell_program_free(p);
    sandcell_program_free(NULL);

    FAILS(sandcell_program_from_path(NULL, &p), SANDCELL_ERROR_INVALID_ARGUMENT, "path");
    FAILS(sandcell_program_from_path("x.wasm", NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "program");
    FAILS(sandcell_program_from_bytes(NULL, 10, &p), SANDCELL_ERROR_INVALID_ARGUMENT, "data");
    FAILS(sandcell_program_from_bytes((const uint8_t *)"x", SIZE_MAX, &p), SANDCELL_ERROR_INVALID_ARGUMENT, "overflows");
    FAILS(sandcell_program_from_bytes((const uint8_t *)"x", 1, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "program");
    /* A policy handle is not a program handle. */
    sandcell_policy_t *pol = NULL;
    OK(sandcell_policy_new(&pol));
    FAILS(sandcell_program_add_arg((sandcell_program_t *)pol, "x"), SANDCELL_ERROR_INVALID_ARGUMENT, "not a live program");
    sandcell_policy_free(pol);
}

/* ------------------------------------------------------------------------------------------ */
/* Runs on one backend. */

typedef struct {
    char buf[1 << 16];
    size_t out_len, err_len;
    int calls;
    int wrong_thread;
    pthread_t thread;
} collected_t;

static void collect(void *user_data, uint32_t stream, const uint8_t *data, size_t len) {
    collected_t *c = user_data;
    c->calls++;
    if (!pthread_equal(pthread_self(), c->thread)) c->wrong_thread++;
    if (stream == SANDCELL_STREAM_STDOUT && c->out_len + len < sizeof c->buf) {
        memcpy(c->buf + c->out_len, data, len);
        c->out_len += len;
    } else if (stream == SANDCELL_STREAM_STDERR) {
        c->err_len += len;
    }
}

typedef struct {
    const sandcell_interrupt_t *handle;
    const sandcell_sandbox_t *sandbox;
    long delay_ms;
} trigger_t;

static void *trigger_later(void *arg) {
    trigger_t *t = arg;
    sleep_ms(t->delay_ms);
    if (t->handle) OK(sandcell_interrupt_trigger(t->handle));
    if (t->sandbox) OK(sandcell_sandbox_interrupt(t->sandbox));
    return NULL;
}

/* The structs the library fills in: it writes only within their `size` and sets `size` to what it
 * wrote; a size too small for this version of the struct is refused and nothing is written. */
static void test_extensible_outputs(const sandcell_outcome_t *o) {
    /* A newer caller's bigger struct: the library fills in the fields it knows. */
    struct {
        sandcell_outcome_summary_t summary;
        unsigned char newer_fields[64];
    } big;
    memset(&big, 0xab, sizeof big);
    big.summary.size = sizeof big;
    OK(sandcell_outcome_summary(o, &big.summary));
    CHECK(big.summary.size == sizeof(sandcell_outcome_summary_t));
    CHECK(big.summary.usage.size == sizeof(sandcell_usage_t));
    CHECK(big.summary.status == SANDCELL_STATUS_EXITED && big.summary.stdout_len == 14);
    int untouched = 1;
    for (size_t i = 0; i < sizeof big.newer_fields; i++) untouched &= big.newer_fields[i] == 0xab;
    CHECK(untouched);

    struct {
        sandcell_usage_t usage;
        unsigned char newer_fields[64];
    } big_usage;
    memset(&big_usage, 0xab, sizeof big_usage);
    big_usage.usage.size = sizeof big_usage;
    OK(sandcell_outcome_usage(o, &big_usage.usage));
    CHECK(big_usage.usage.size == sizeof(sandcell_usage_t) && big_usage.usage.wall_ns > 0);
    untouched = 1;
    for (size_t i = 0; i < sizeof big_usage.newer_fields; i++) untouched &= big_usage.newer_fields[i] == 0xab;
    CHECK(untouched);

    /* Not set, or too small: refused, nothing written. */
    sandcell_outcome_summary_t small;
    memset(&small, 0xab, sizeof small);
    small.size = 0;
    FAILS(sandcell_outcome_summary(o, &small), SANDCELL_ERROR_INVALID_ARGUMENT, "summary->size");
    CHECK(small.size == 0 && small.status == 0xababababu);
    small.size = offsetof(sandcell_outcome_summary_t, usage);
    FAILS(sandcell_outcome_summary(o, &small), SANDCELL_ERROR_INVALID_ARGUMENT,
          "sizeof(sandcell_outcome_summary_t)");
    CHECK(small.status == 0xababababu);
    sandcell_usage_t small_usage;
    memset(&small_usage, 0xab, sizeof small_usage);
    small_usage.size = offsetof(sandcell_usage_t, has_fuel);
    FAILS(sandcell_outcome_usage(o, &small_usage), SANDCELL_ERROR_INVALID_ARGUMENT, "sizeof(sandcell_usage_t)");
    CHECK(small_usage.wall_ns == 0xababababababababull);
}

static void ignore_output(void *user_data, uint32_t stream, const uint8_t *data, size_t len) {
    (void)user_data, (void)stream, (void)data, (void)len;
}

/* Run options: `size` must be set; a newer caller's bigger struct is accepted. */
static void test_extensible_options(const sandcell_sandbox_t *sb, const sandcell_program_t *hello) {
    sandcell_outcome_t *o = NULL;
    sandcell_run_options_t unset = {0};
    FAILS(sandcell_sandbox_run(sb, hello, &unset, &o), SANDCELL_ERROR_INVALID_ARGUMENT, "options->size");
    unset.size = offsetof(sandcell_run_options_t, on_output2);
    FAILS(sandcell_sandbox_run(sb, hello, &unset, &o), SANDCELL_ERROR_INVALID_ARGUMENT,
          "sizeof(sandcell_run_options_t)");
    CHECK(o == NULL);

    struct {
        sandcell_run_options_t options;
        unsigned char newer_fields[64];
    } big;
    memset(&big, 0, sizeof big);
    memset(big.newer_fields, 0xff, sizeof big.newer_fields); /* unknown here: ignored */
    big.options.size = sizeof big;
    big.options.on_output = ignore_output;
    if ((o = run(sb, hello, &big.options))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_EXITED);
        CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "Hello, world!\n"));
        sandcell_outcome_free(o);
    }
}

typedef struct {
    int calls;
    int stop_at;      /* the call that returns non-zero (1-based); 0: none */
    size_t bytes;
    int wrong_thread;
    pthread_t thread;
    atomic_int seen;  /* set at the first call, for another thread */
} stopper_t;

static int count_and_stop(void *user_data, uint32_t stream, const uint8_t *data, size_t len) {
    stopper_t *s = user_data;
    (void)stream, (void)data;
    s->calls++;
    s->bytes += len;
    if (!pthread_equal(pthread_self(), s->thread)) s->wrong_thread++;
    atomic_store(&s->seen, 1);
    return s->stop_at != 0 && s->calls >= s->stop_at;
}

static void stopper_reset(stopper_t *s, int stop_at) {
    s->calls = 0;
    s->stop_at = stop_at;
    s->bytes = 0;
    s->wrong_thread = 0;
    s->thread = pthread_self();
    atomic_store(&s->seen, 0);
}

typedef struct {
    stopper_t *stopper;
    const sandcell_interrupt_t *handle;
} trigger_on_output_t;

/* Triggers the handle once the guest has written something. */
static void *trigger_on_output(void *arg) {
    trigger_on_output_t *t = arg;
    for (int i = 0; i < 10000 && !atomic_load(&t->stopper->seen); i++) sleep_ms(1);
    OK(sandcell_interrupt_trigger(t->handle));
    return NULL;
}

/* sandcell_output_fn2: its result stops the run. */
static void test_output_fn2(const sandcell_sandbox_t *sb) {
    sandcell_outcome_t *o = NULL;
    stopper_t st;
    stopper_reset(&st, 0);
    sandcell_run_options_t opts = {.size = sizeof(sandcell_run_options_t)};
    opts.on_output2 = count_and_stop;
    opts.user_data = &st;
    sandcell_program_t *hello = wat(HELLO);
    sandcell_program_t *flood = wat(FLOOD);
    sandcell_program_t *go = wat(GO_SPIN);

    /* 0: the run goes on. */
    if ((o = run(sb, hello, &opts))) {
        int32_t code = -1;
        CHECK(status_of(o, &code) == SANDCELL_STATUS_EXITED && code == 0);
        CHECK(st.calls >= 1 && st.bytes == 14 && st.wrong_thread == 0);
        sandcell_outcome_free(o);
    }

    /* Non-zero: the run ends as interrupted, and the callback is not called again. */
    stopper_reset(&st, 3);
    double start = now_s();
    if ((o = run(sb, flood, &opts))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_INTERRUPTED);
        CHECK(strcmp(kind_of(o), "interrupted") == 0);
        CHECK(st.calls == 3 && st.wrong_thread == 0);
        CHECK(now_s() - start < 5.0);
        sandcell_outcome_free(o);
    }
    stopper_reset(&st, 1);
    if ((o = run(sb, hello, &opts))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_INTERRUPTED);
        CHECK(st.calls == 1);
        sandcell_outcome_free(o);
    }

    /* With an interrupt handle: a stop by the callback does not trigger the handle... */
    sandcell_interrupt_t *irq = NULL;
    OK(sandcell_interrupt_new(&irq));
    opts.interrupt = irq;
    stopper_reset(&st, 1);
    if ((o = run(sb, flood, &opts))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_INTERRUPTED);
        CHECK(st.calls == 1);
        sandcell_outcome_free(o);
    }
    stopper_reset(&st, 0);
    if ((o = run(sb, hello, &opts))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_EXITED);
        sandcell_outcome_free(o);
    }
    /* ... and the handle still stops the run, from another thread... */
    stopper_reset(&st, 0);
    trigger_on_output_t t = {&st, irq};
    pthread_t th;
    pthread_create(&th, NULL, trigger_on_output, &t);
    start = now_s();
    if ((o = run(sb, go, &opts))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_INTERRUPTED);
        CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "go\n"));
        CHECK(now_s() - start < 5.0);
        sandcell_outcome_free(o);
    }
    pthread_join(th, NULL);
    /* ... and, triggered, stops the next run at once. */
    stopper_reset(&st, 0);
    if ((o = run(sb, hello, &opts))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_INTERRUPTED);
        sandcell_outcome_free(o);
    }
    sandcell_interrupt_free(irq);

    /* One of on_output and on_output2, not both. */
    opts.interrupt = NULL;
    opts.on_output = ignore_output;
    o = NULL;
    FAILS(sandcell_sandbox_run(sb, hello, &opts, &o), SANDCELL_ERROR_INVALID_ARGUMENT, "not both");
    CHECK(o == NULL);

    sandcell_program_free(go);
    sandcell_program_free(flood);
    sandcell_program_free(hello);
}

static void test_runs(const char *backend) {
    sandcell_policy_t *pol = policy_with(64u << 20, 10000);
    OK(sandcell_policy_set_env(pol, "GREETING", "hello"));
    sandcell_sandbox_t *sb = NULL;
    OK(sandcell_sandbox_new(backend, pol, NULL, &sb));
    sandcell_policy_free(pol); /* the sandbox keeps its own copy */
    if (sb == NULL) return;

    /* Hello: status, kind, detail, output, usage, JSON; and the same bytes streamed. */
    sandcell_program_t *hello = wat(HELLO);
    collected_t *c = calloc(1, sizeof *c);
    c->thread = pthread_self();
    sandcell_run_options_t opts = {.size = sizeof(sandcell_run_options_t)};
    opts.on_output = collect;
    opts.user_data = c;
    sandcell_outcome_t *o = run(sb, hello, &opts);
    if (o) {
        int32_t code = -1;
        CHECK(status_of(o, &code) == SANDCELL_STATUS_EXITED && code == 0);
        CHECK(strcmp(kind_of(o), "exited") == 0);
        const char *detail = "x", *trap = "x";
        OK(sandcell_outcome_detail(o, &detail));
        CHECK(detail == NULL);
        OK(sandcell_outcome_trap_kind(o, &trap));
        CHECK(trap == NULL);
        CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "Hello, world!\n"));
        CHECK(output_is(o, SANDCELL_STREAM_STDERR, ""));
        CHECK(c->out_len == 14 && memcmp(c->buf, "Hello, world!\n", 14) == 0);
        CHECK(c->calls >= 1 && c->wrong_thread == 0);
        sandcell_usage_t u;
        memset(&u, 0xff, sizeof u);
        u.size = sizeof u;
        OK(sandcell_outcome_usage(o, &u));
        CHECK(u.size == sizeof u);
        CHECK(u.wall_ns > 0 && u.wall_ns < 10ull * 1000000000ull);
        CHECK(!u.has_fuel && u.fuel == 0);
        sandcell_outcome_summary_t sum;
        memset(&sum, 0xff, sizeof sum);
        sum.size = sizeof sum;
        OK(sandcell_outcome_summary(o, &sum));
        CHECK(sum.size == sizeof sum && sum.usage.size == sizeof sum.usage);
        CHECK(sum.status == SANDCELL_STATUS_EXITED && sum.code == 0 && strcmp(sum.kind, "exited") == 0);
        CHECK(sum.trap_kind == NULL && sum.detail == NULL);
        CHECK(sum.stdout_len == 14 && memcmp(sum.stdout_data, "Hello, world!\n", 14) == 0 && sum.stderr_len == 0);
        CHECK(sum.usage.wall_ns == u.wall_ns && !sum.usage.has_fuel);
        FAILS(sandcell_outcome_summary(o, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "summary");
        FAILS(sandcell_outcome_summary(NULL, &sum), SANDCELL_ERROR_INVALID_ARGUMENT, "outcome");
        test_extensible_outputs(o);
        char *json = NULL;
        OK(sandcell_outcome_to_json(o, &json));
        CHECK(json && strstr(json, "\"kind\":\"exited\"") && strstr(json, "Hello, world!\\n"));
        sandcell_string_free(json);
        /* Bad arguments on a live outcome. */
        const uint8_t *d = NULL;
        size_t n = 0;
        FAILS(sandcell_outcome_output(o, 3, &d, &n), SANDCELL_ERROR_INVALID_ARGUMENT, "stream");
        FAILS(sandcell_outcome_output(o, SANDCELL_STREAM_STDOUT, NULL, &n), SANDCELL_ERROR_INVALID_ARGUMENT, "data");
        FAILS(sandcell_outcome_status(o, NULL, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "status");
        FAILS(sandcell_outcome_kind(o, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "kind");
        FAILS(sandcell_outcome_trap_kind(o, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "trap_kind");
        FAILS(sandcell_outcome_detail(o, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "detail");
        FAILS(sandcell_outcome_usage(o, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "usage");
        FAILS(sandcell_outcome_to_json(o, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "json");
        sandcell_outcome_free(o);
        uint32_t s = 0;
        FAILS(sandcell_outcome_status(o, &s, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "not a live outcome");
        sandcell_outcome_free(o);
    }
    free(c);

    /* stdin, stderr, environment, exit codes, traps, entry points. */
    sandcell_program_t *cat = wat(CAT);
    OK(sandcell_program_set_stdin(cat, (const uint8_t *)"piped \0bytes", 12));
    if ((o = run(sb, cat, NULL))) {
        const uint8_t *d = NULL;
        size_t n = 0;
        OK(sandcell_outcome_output(o, SANDCELL_STREAM_STDOUT, &d, &n));
        CHECK(n == 12 && memcmp(d, "piped \0bytes", 12) == 0);
        CHECK(output_is(o, SANDCELL_STREAM_STDERR, "err"));
        sandcell_outcome_free(o);
    }

    /* The same guest with stdin streamed from a descriptor (a pipe): the library reads its own
     * duplicate, so ours is closed right after the call; a bad descriptor is refused. */
    int fds[2];
    CHECK(pipe(fds) == 0);
    CHECK(write(fds[1], "streamed", 8) == 8);
    close(fds[1]);
    sandcell_run_options_t streamed = {.size = sizeof(sandcell_run_options_t)};
    streamed.stream_stdin = 1;
    streamed.stdin_fd = fds[0];
    if ((o = run(sb, cat, &streamed))) {
        CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "streamed"));
        sandcell_outcome_free(o);
    }
    close(fds[0]);
    streamed.stdin_fd = -1;
    sandcell_outcome_t *none = NULL;
    FAILS(sandcell_sandbox_run(sb, cat, &streamed, &none), SANDCELL_ERROR_INVALID_ARGUMENT, "stdin_fd");
    CHECK(none == NULL);
    streamed.stdin_fd = 1000000;
    FAILS(sandcell_sandbox_run(sb, cat, &streamed, &none), SANDCELL_ERROR_INVALID_ARGUMENT, "stdin_fd");
    sandcell_program_free(cat);

    sandcell_program_t *env = wat(ENV);
    if ((o = run(sb, env, NULL))) {
        CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "GREETING=hello"));
        sandcell_outcome_free(o);
    }
    OK(sandcell_program_set_env(env, "GREETING", "from the program"));
    if ((o = run(sb, env, NULL))) {
        CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "GREETING=from the program"));
        sandcell_outcome_free(o);
    }
    OK(sandcell_program_set_env(env, "BAD=NAME", "x"));
    o = NULL;
    FAILS(sandcell_sandbox_run(sb, env, NULL, &o), SANDCELL_ERROR_INVALID_PROGRAM, "BAD=NAME");
    CHECK(o == NULL);
    sandcell_program_free(env);

    sandcell_program_t *exit3 = wat(EXIT3);
    if ((o = run(sb, exit3, NULL))) {
        int32_t code = 0;
        CHECK(status_of(o, &code) == SANDCELL_STATUS_EXITED && code == 3);
        sandcell_outcome_free(o);
    }
    sandcell_program_free(exit3);

    sandcell_program_t *trap = wat(TRAP);
    if ((o = run(sb, trap, NULL))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_TRAP);
        CHECK(strcmp(kind_of(o), "trap") == 0);
        const char *tk = NULL, *detail = NULL;
        OK(sandcell_outcome_trap_kind(o, &tk));
        CHECK(tk && strcmp(tk, "unreachable") == 0);
        sandcell_outcome_summary_t sum = {.size = sizeof(sandcell_outcome_summary_t)};
        OK(sandcell_outcome_summary(o, &sum));
        CHECK(sum.status == SANDCELL_STATUS_TRAP && sum.trap_kind == tk && sum.detail && strstr(sum.detail, "unreachable"));
        OK(sandcell_outcome_detail(o, &detail));
        CHECK(detail && strstr(detail, "unreachable"));
        sandcell_outcome_free(o);
    }
    sandcell_program_free(trap);

    /* Entry points: the wasm backend calls the export; the micro-VM refuses them. */
    sandcell_program_t *add = wat(ADD);
    OK(sandcell_program_set_entry(add, "add"));
    OK(sandcell_program_add_arg(add, "40"));
    OK(sandcell_program_add_arg(add, "2"));
    if (strcmp(backend, "wasm") == 0) {
        if ((o = run(sb, add, NULL))) {
            CHECK(status_of(o, NULL) == SANDCELL_STATUS_EXITED);
            CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "42\n"));
            sandcell_outcome_free(o);
        }
    } else {
        o = NULL;
        FAILS(sandcell_sandbox_run(sb, add, NULL, &o), SANDCELL_ERROR_INVALID_PROGRAM, "entry");
    }
    sandcell_program_free(add);

    /* A program that is not one, and one that cannot be read: errors, not outcomes. */
    sandcell_program_t *junk = NULL;
    OK(sandcell_program_from_bytes((const uint8_t *)"\0asm\x01\0\0\0\xff", 9, &junk));
    o = NULL;
    FAILS(sandcell_sandbox_run(sb, junk, NULL, &o), SANDCELL_ERROR_INVALID_PROGRAM, "");
    sandcell_program_free(junk);
    OK(sandcell_program_from_path("/does/not/exist.wasm", &junk));
    FAILS(sandcell_sandbox_run(sb, junk, NULL, &o), SANDCELL_ERROR_INVALID_PROGRAM, "/does/not/exist.wasm");
    CHECK(o == NULL);
    sandcell_program_free(junk);

    /* Bad run arguments. */
    FAILS(sandcell_sandbox_run(NULL, hello, NULL, &o), SANDCELL_ERROR_INVALID_ARGUMENT, "sandbox");
    FAILS(sandcell_sandbox_run(sb, NULL, NULL, &o), SANDCELL_ERROR_INVALID_ARGUMENT, "program");
    FAILS(sandcell_sandbox_run(sb, hello, NULL, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "outcome");
    sandcell_run_options_t bad_opts = {.size = sizeof(sandcell_run_options_t)};
    bad_opts.interrupt = (const sandcell_interrupt_t *)hello;
    FAILS(sandcell_sandbox_run(sb, hello, &bad_opts, &o), SANDCELL_ERROR_INVALID_ARGUMENT, "interrupt");
    test_extensible_options(sb, hello);
    test_output_fn2(sb);
    FAILS(sandcell_sandbox_interrupt(NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "sandbox");

    /* Interrupt handles: one triggered from another thread stops a spinning guest. */
    sandcell_program_t *spin = wat(SPIN);
    sandcell_interrupt_t *irq = NULL;
    OK(sandcell_interrupt_new(&irq));
    sandcell_run_options_t iopts = {.size = sizeof(sandcell_run_options_t)};
    iopts.interrupt = irq;
    trigger_t t = {irq, NULL, 200};
    pthread_t th;
    pthread_create(&th, NULL, trigger_later, &t);
    double start = now_s();
    if ((o = run(sb, spin, &iopts))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_INTERRUPTED);
        CHECK(strcmp(kind_of(o), "interrupted") == 0);
        CHECK(now_s() - start < 5.0);
        sandcell_outcome_free(o);
    }
    pthread_join(th, NULL);
    /* It stays triggered: a run started with it ends at once. */
    if ((o = run(sb, hello, &iopts))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_INTERRUPTED);
        sandcell_outcome_free(o);
    }
    sandcell_interrupt_free(irq);
    FAILS(sandcell_interrupt_trigger(irq), SANDCELL_ERROR_INVALID_ARGUMENT, "not a live interrupt");
    FAILS(sandcell_sandbox_run(sb, hello, &iopts, &o), SANDCELL_ERROR_INVALID_ARGUMENT, "interrupt");
    sandcell_interrupt_free(irq);
    sandcell_interrupt_free(NULL);
    FAILS(sandcell_interrupt_new(NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "interrupt");
    FAILS(sandcell_interrupt_trigger(NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "interrupt");

    /* The sandbox's interrupt stops the run in progress, not the runs after it. */
    trigger_t ts = {NULL, sb, 200};
    pthread_create(&th, NULL, trigger_later, &ts);
    if ((o = run(sb, spin, NULL))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_INTERRUPTED);
        sandcell_outcome_free(o);
    }
    pthread_join(th, NULL);
    if ((o = run(sb, hello, NULL))) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_EXITED);
        sandcell_outcome_free(o);
    }
    sandcell_program_free(hello);
    sandcell_sandbox_free(sb);

    /* Limits: timeout, fuel, output cap, memory. */
    pol = policy_with(64u << 20, 300);
    OK(sandcell_policy_set_max_output(pol, 10000));
    OK(sandcell_policy_set_fuel(pol, 0));
    OK(sandcell_sandbox_new(backend, pol, NULL, &sb));
    if (sb) {
        if ((o = run(sb, spin, NULL))) {
            CHECK(status_of(o, NULL) == SANDCELL_STATUS_TIMEOUT);
            CHECK(strcmp(kind_of(o), "timeout") == 0);
            sandcell_outcome_free(o);
        }
        sandcell_program_t *flood = wat(FLOOD);
        if ((o = run(sb, flood, NULL))) {
            CHECK(status_of(o, NULL) == SANDCELL_STATUS_OUTPUT_LIMIT);
            const uint8_t *d = NULL;
            size_t n = 0;
            OK(sandcell_outcome_output(o, SANDCELL_STREAM_STDOUT, &d, &n));
            CHECK(n == 10000);
            sandcell_outcome_free(o);
        }
        sandcell_program_free(flood);
        sandcell_program_t *grow = wat(GROW);
        if ((o = run(sb, grow, NULL))) {
            CHECK(status_of(o, NULL) == SANDCELL_STATUS_MEMORY_LIMIT);
            sandcell_outcome_free(o);
        }
        sandcell_program_free(grow);
        sandcell_sandbox_free(sb);
        sb = NULL;
    }
    /* A cap of zero bytes: the first byte of output ends the run. */
    OK(sandcell_policy_set_max_output_zero(pol));
    OK(sandcell_sandbox_new(backend, pol, NULL, &sb));
    if (sb) {
        sandcell_program_t *hello0 = wat(HELLO);
        if ((o = run(sb, hello0, NULL))) {
            CHECK(status_of(o, NULL) == SANDCELL_STATUS_OUTPUT_LIMIT);
            CHECK(output_is(o, SANDCELL_STREAM_STDOUT, ""));
            sandcell_outcome_free(o);
        }
        sandcell_program_free(hello0);
        sandcell_sandbox_free(sb);
        sb = NULL;
    }
    OK(sandcell_policy_set_max_output(pol, 0)); /* back to the default */
    OK(sandcell_policy_set_fuel(pol, 100000));
    OK(sandcell_policy_set_timeout_ms(pol, 0));
    OK(sandcell_sandbox_new(backend, pol, NULL, &sb));
    if (sb) {
        if ((o = run(sb, spin, NULL))) {
            CHECK(status_of(o, NULL) == SANDCELL_STATUS_CPU_LIMIT);
            const char *detail = NULL;
            OK(sandcell_outcome_detail(o, &detail));
            CHECK(detail && strstr(detail, "fuel"));
            sandcell_usage_t u = {.size = sizeof(sandcell_usage_t)};
            OK(sandcell_outcome_usage(o, &u));
            CHECK(u.has_fuel && u.fuel >= 100000);
            sandcell_outcome_free(o);
        }
        sandcell_sandbox_free(sb);
    }
    sandcell_policy_free(pol);
    sandcell_program_free(spin);
}

/* ------------------------------------------------------------------------------------------ */
/* Concurrent runs on one sandbox from several threads. */

#define THREADS 6
#define RUNS_PER_THREAD 8

typedef struct {
    const sandcell_sandbox_t *sb;
    int index;
    atomic_int *failed;
} worker_t;

static void *worker(void *arg) {
    worker_t *w = arg;
    for (int i = 0; i < RUNS_PER_THREAD; i++) {
        char input[64];
        int len = snprintf(input, sizeof input, "thread %d run %d", w->index, i);
        sandcell_program_t *p = NULL;
        sandcell_outcome_t *o = NULL;
        sandcell_error_t *e = sandcell_program_from_bytes((const uint8_t *)CAT, strlen(CAT), &p);
        if (!e) e = sandcell_program_set_stdin(p, (const uint8_t *)input, (size_t)len);
        if (!e) e = sandcell_sandbox_run(w->sb, p, NULL, &o);
        if (e) {
            fprintf(stderr, "worker %d: %s\n", w->index, sandcell_error_message(e));
            sandcell_error_free(e);
            atomic_fetch_add(w->failed, 1);
        } else {
            const uint8_t *d = NULL;
            size_t n = 0;
            uint32_t s = 0;
            int32_t code = -1;
            sandcell_error_free(sandcell_outcome_output(o, SANDCELL_STREAM_STDOUT, &d, &n));
            sandcell_error_free(sandcell_outcome_status(o, &s, &code));
            if (s != SANDCELL_STATUS_EXITED || code != 0 || n != (size_t)len || memcmp(d, input, n) != 0) {
                fprintf(stderr, "worker %d run %d: wrong outcome (status %u, %zu bytes)\n", w->index, i, s, n);
                atomic_fetch_add(w->failed, 1);
            }
        }
        sandcell_outcome_free(o);
        sandcell_program_free(p);
    }
    return NULL;
}

static void test_concurrent(const char *backend) {
    sandcell_sandbox_t *sb = NULL;
    sandcell_policy_t *pol = policy_with(32u << 20, 20000);
    OK(sandcell_sandbox_new(backend, pol, NULL, &sb));
    sandcell_policy_free(pol);
    if (!sb) return;
    atomic_int failed = 0;
    pthread_t threads[THREADS];
    worker_t workers[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (worker_t){sb, i, &failed};
        pthread_create(&threads[i], NULL, worker, &workers[i]);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    checks++;
    if (atomic_load(&failed) != 0) {
        failures++;
        fprintf(stderr, "%s: %d concurrent runs failed\n", backend, atomic_load(&failed));
    }
    sandcell_sandbox_free(sb);
    /* Freed: refused, and a double free is ignored. */
    sandcell_outcome_t *o = NULL;
    sandcell_program_t *p = wat(HELLO);
    FAILS(sandcell_sandbox_run(sb, p, NULL, &o), SANDCELL_ERROR_INVALID_ARGUMENT, "not a live sandbox");
    FAILS(sandcell_sandbox_interrupt(sb), SANDCELL_ERROR_INVALID_ARGUMENT, "not a live sandbox");
    sandcell_program_free(p);
    sandcell_sandbox_free(sb);
    sandcell_sandbox_free(NULL);
}

/* ------------------------------------------------------------------------------------------ */

/* A prepared program: runs many times with each run's options; keeps its sandbox alive (the
 * sandbox is freed first here); bad handles are refused. */
static void test_prepared(const char *backend) {
    sandcell_sandbox_t *sb = NULL;
    OK(sandcell_sandbox_new(backend, NULL, NULL, &sb));
    if (sb == NULL) return;
    sandcell_program_t *hello = wat(HELLO);
    sandcell_prepared_t *prepared = NULL;
    OK(sandcell_sandbox_prepare(sb, hello, &prepared));
    FAILS(sandcell_sandbox_prepare(sb, hello, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "prepared");
    FAILS(sandcell_sandbox_prepare(NULL, hello, &prepared), SANDCELL_ERROR_INVALID_ARGUMENT, "sandbox");
    sandcell_program_free(hello);
    sandcell_sandbox_free(sb);
    for (int i = 0; i < 3 && prepared; i++) {
        sandcell_outcome_t *o = NULL;
        sandcell_run_options_t opts = {.size = sizeof(sandcell_run_options_t)};
        OK(sandcell_prepared_run(prepared, i == 0 ? NULL : &opts, &o));
        if (o) {
            CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "Hello, world!\n"));
            sandcell_outcome_free(o);
        }
    }
    FAILS(sandcell_prepared_run(prepared, NULL, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "outcome");
    sandcell_outcome_t *none = NULL;
    FAILS(sandcell_prepared_run(NULL, NULL, &none), SANDCELL_ERROR_INVALID_ARGUMENT, "prepared");
    sandcell_prepared_free(prepared);
    sandcell_prepared_free(NULL);
    FAILS(sandcell_prepared_run(prepared, NULL, &none), SANDCELL_ERROR_INVALID_ARGUMENT, "prepared");

    /* Each run's own stdin bytes. */
    OK(sandcell_sandbox_new(backend, NULL, NULL, &sb));
    sandcell_program_t *cat = wat(CAT);
    sandcell_prepared_t *pcat = NULL;
    OK(sandcell_sandbox_prepare(sb, cat, &pcat));
    sandcell_program_free(cat);
    const char *inputs[] = {"first", "", "third input"};
    for (int i = 0; i < 3 && pcat; i++) {
        sandcell_run_options_t opts = {.size = sizeof(sandcell_run_options_t)};
        opts.stdin_data = (const uint8_t *)inputs[i];
        opts.stdin_len = strlen(inputs[i]);
        sandcell_outcome_t *o = NULL;
        OK(sandcell_prepared_run(pcat, &opts, &o));
        if (o) {
            CHECK(output_is(o, SANDCELL_STREAM_STDOUT, inputs[i]));
            sandcell_outcome_free(o);
        }
    }
    sandcell_run_options_t both = {.size = sizeof(sandcell_run_options_t)};
    both.stdin_data = (const uint8_t *)"x";
    both.stdin_len = 1;
    both.stream_stdin = 1;
    FAILS(sandcell_prepared_run(pcat, &both, &none), SANDCELL_ERROR_INVALID_ARGUMENT, "not both");
    sandcell_prepared_free(pcat);
    sandcell_sandbox_free(sb);
}

/* Prepare options: a pool of ready instances and its statistics where the backend keeps one
 * (micro-VM), a loud refusal where it does not (wasm); bad arguments refused. */
static void test_prepare_options(const char *backend) {
    sandcell_sandbox_t *sb = NULL;
    OK(sandcell_sandbox_new(backend, NULL, NULL, &sb));
    if (sb == NULL) return;
    sandcell_program_t *hello = wat(HELLO);
    sandcell_prepare_options_t po = {.size = sizeof(sandcell_prepare_options_t)};
    po.set_pool_size = 1;
    po.pool_size = 2;
    po.idle_timeout_ms = 60000;
    sandcell_prepared_t *prepared = NULL;
    sandcell_pool_stats_t stats = {.size = sizeof(sandcell_pool_stats_t)};
    int has_pool = -1;
    if (strcmp(backend, "microvm") == 0) {
        OK(sandcell_sandbox_prepare_with(sb, hello, &po, &prepared));
        for (int i = 0; i < 3 && prepared; i++) {
            sandcell_outcome_t *o = NULL;
            OK(sandcell_prepared_run(prepared, NULL, &o));
            if (o) {
                CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "Hello, world!\n"));
                sandcell_outcome_free(o);
            }
        }
        OK(sandcell_prepared_pool_stats(prepared, &stats, &has_pool));
        CHECK(has_pool == 1);
        CHECK(stats.size == sizeof(sandcell_pool_stats_t));
        CHECK(stats.hits == 3 && stats.misses == 0 && stats.idle == 2 && stats.snapshot_bytes > 0);
        FAILS(sandcell_prepared_pool_stats(prepared, &stats, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "has_pool");
        sandcell_pool_stats_t small = {.size = 8};
        FAILS(sandcell_prepared_pool_stats(prepared, &small, &has_pool), SANDCELL_ERROR_INVALID_ARGUMENT,
              "sandcell_pool_stats_t");
        sandcell_prepared_free(prepared);
        po.pool_size = SANDCELL_MAX_POOL_SIZE + 1;
        sandcell_prepared_t *none = NULL;
        FAILS(sandcell_sandbox_prepare_with(sb, hello, &po, &none), SANDCELL_ERROR_INVALID_PROGRAM, "at most");
        sandcell_prepare_options_t ready = {.size = sizeof(sandcell_prepare_options_t), .until_ready = 1};
        /* hello never writes /run/sandcell/ready: it cannot be prepared until ready. */
        FAILS(sandcell_sandbox_prepare_with(sb, hello, &ready, &none), SANDCELL_ERROR_INVALID_PROGRAM,
              "did not say it was ready");
    } else {
        sandcell_prepared_t *none = NULL;
        FAILS(sandcell_sandbox_prepare_with(sb, hello, &po, &none), SANDCELL_ERROR_UNENFORCEABLE, "pool");
        /* No options: a plain prepare, without a pool. */
        OK(sandcell_sandbox_prepare_with(sb, hello, NULL, &prepared));
        if (prepared) {
            OK(sandcell_prepared_pool_stats(prepared, &stats, &has_pool));
            CHECK(has_pool == 0);
        }
        sandcell_prepared_free(prepared);
    }
    /* Snapshot files: saved by one sandbox, loaded by another with the same cache; a corrupt
     * one refused; backends without snapshots refuse to save. */
    {
        char dir[] = "/tmp/sandcell-c-snap-XXXXXX";
        CHECK(mkdtemp(dir) != NULL);
        char file[256];
        snprintf(file, sizeof file, "%s/hello.snap", dir);
        sandcell_sandbox_t *a = NULL, *b = NULL;
        OK(sandcell_sandbox_new(backend, NULL, dir, &a));
        OK(sandcell_sandbox_new(backend, NULL, dir, &b));
        sandcell_prepared_t *pa = NULL, *pb = NULL;
        if (a) OK(sandcell_sandbox_prepare(a, hello, &pa));
        if (pa && strcmp(backend, "microvm") == 0) {
            OK(sandcell_prepared_save_snapshot(pa, file));
            FAILS(sandcell_prepared_save_snapshot(pa, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "path");
            sandcell_prepare_options_t load = {.size = sizeof(sandcell_prepare_options_t), .snapshot_file = file};
            if (b) OK(sandcell_sandbox_prepare_with(b, hello, &load, &pb));
            if (pb) {
                sandcell_outcome_t *o = NULL;
                OK(sandcell_prepared_run(pb, NULL, &o));
                if (o) CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "Hello, world!\n"));
                sandcell_outcome_free(o);
                sandcell_prepared_free(pb);
            }
            FILE *f = fopen(file, "r+b");
            CHECK(f != NULL);
            if (f) {
                fseek(f, 60, SEEK_SET);
                fputc('!', f);
                fclose(f);
            }
            sandcell_prepared_t *none = NULL;
            if (b) FAILS(sandcell_sandbox_prepare_with(b, hello, &load, &none), SANDCELL_ERROR_INVALID_PROGRAM, "verify");
            /* Without a cache there is no key to seal snapshot files with. */
            sandcell_sandbox_t *uncached = NULL;
            sandcell_prepared_t *pu = NULL;
            OK(sandcell_sandbox_new(backend, NULL, NULL, &uncached));
            if (uncached) OK(sandcell_sandbox_prepare(uncached, hello, &pu));
            if (pu) FAILS(sandcell_prepared_save_snapshot(pu, file), SANDCELL_ERROR_UNENFORCEABLE, "cache");
            sandcell_prepared_free(pu);
            sandcell_sandbox_free(uncached);
        } else if (pa) {
            FAILS(sandcell_prepared_save_snapshot(pa, file), SANDCELL_ERROR_UNENFORCEABLE, "snapshot");
        }
        sandcell_prepared_free(pa);
        sandcell_sandbox_free(a);
        sandcell_sandbox_free(b);
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        CHECK(system(cmd) == 0);
    }
    sandcell_prepare_options_t bad = {.size = 4};
    sandcell_prepared_t *none = NULL;
    FAILS(sandcell_sandbox_prepare_with(sb, hello, &bad, &none), SANDCELL_ERROR_INVALID_ARGUMENT,
          "sandcell_prepare_options_t");
    sandcell_program_free(hello);
    sandcell_sandbox_free(sb);
}

static void test_sandbox_new(void) {
    sandcell_sandbox_t *sb = NULL;
    FAILS(sandcell_sandbox_new("quantum", NULL, NULL, &sb), SANDCELL_ERROR_INVALID_ARGUMENT, "quantum");
    FAILS(sandcell_sandbox_new(NULL, NULL, NULL, &sb), SANDCELL_ERROR_INVALID_ARGUMENT, "backend");
    FAILS(sandcell_sandbox_new("wasm", NULL, NULL, NULL), SANDCELL_ERROR_INVALID_ARGUMENT, "sandbox");
    FAILS(sandcell_sandbox_new("wasm", NULL, "\xff", &sb), SANDCELL_ERROR_INVALID_ARGUMENT, "cache_dir");
    CHECK(sb == NULL);
    /* A policy field the backend cannot enforce is refused, not ignored. */
    sandcell_policy_t *pol = NULL;
    OK(sandcell_policy_new(&pol));
    OK(sandcell_policy_set_network(pol, SANDCELL_NETWORK_LOOPBACK));
    FAILS(sandcell_sandbox_new("wasm", pol, NULL, &sb), SANDCELL_ERROR_UNENFORCEABLE, "network");
    /* ... unless best_effort asks to run anyway; the outcome says what was skipped. */
    OK(sandcell_policy_set_best_effort(pol, true));
    OK(sandcell_sandbox_new("wasm", pol, NULL, &sb));
    if (sb) {
        sandcell_program_t *p = wat(HELLO);
        sandcell_outcome_t *o = run(sb, p, NULL);
        char *json = NULL;
        if (o) OK(sandcell_outcome_to_json(o, &json));
        CHECK(json && strstr(json, "\"skipped\":{\"network\""));
        sandcell_string_free(json);
        sandcell_outcome_free(o);
        sandcell_program_free(p);
        sandcell_sandbox_free(sb);
    }
    sandcell_policy_free(pol);
    /* A default policy (NULL) and a cache directory. */
    char dir[] = "/tmp/sandcell-c-cache-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    sb = NULL;
    OK(sandcell_sandbox_new("wasm", NULL, dir, &sb));
    if (sb) {
        sandcell_program_t *p = wat(HELLO);
        sandcell_outcome_t *o = run(sb, p, NULL);
        if (o) CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "Hello, world!\n"));
        sandcell_outcome_free(o);
        sandcell_program_free(p);
        sandcell_sandbox_free(sb);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* The process backend runs native programs; a quick check that it is reachable through the ABI. */
static void test_process_native(void) {
    sandcell_sandbox_t *sb = NULL;
    sandcell_policy_t *pol = policy_with(256u << 20, 10000);
    OK(sandcell_sandbox_new("process", pol, NULL, &sb));
    sandcell_policy_free(pol);
    if (!sb) return;
    sandcell_program_t *p = NULL;
    OK(sandcell_program_from_path("/bin/echo", &p));
    OK(sandcell_program_add_arg(p, "native"));
    sandcell_outcome_t *o = run(sb, p, NULL);
    if (o) {
        CHECK(status_of(o, NULL) == SANDCELL_STATUS_EXITED);
        CHECK(output_is(o, SANDCELL_STREAM_STDOUT, "native\n"));
        sandcell_outcome_free(o);
    }
    sandcell_program_free(p);
    sandcell_sandbox_free(sb);
}

/* Whether `backend` can run here; prints the skip and the reason when not. */
static int available(const char *backend) {
    sandcell_sandbox_t *sb = NULL;
    sandcell_error_t *e = sandcell_sandbox_new(backend, NULL, NULL, &sb);
    if (e == NULL) {
        sandcell_sandbox_free(sb);
        return 1;
    }
    if (sandcell_error_kind(e) == SANDCELL_ERROR_BACKEND_UNAVAILABLE) {
        printf("SKIP %s: %s\n", backend, sandcell_error_message(e));
    } else {
        failures++;
        fprintf(stderr, "%s: unexpected error: %s\n", backend, sandcell_error_message(e));
    }
    sandcell_error_free(e);
    return 0;
}

int main(int argc, char **argv) {
    const char *backends = "wasm";
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--backends") == 0) backends = argv[i + 1];

    test_basics();
    test_policy();
    test_program();
    test_sandbox_new();

    char list[256];
    snprintf(list, sizeof list, "%s", backends);
    for (char *save = NULL, *b = strtok_r(list, ",", &save); b; b = strtok_r(NULL, ",", &save)) {
        if (!available(b)) continue;
        if (strcmp(b, "process") == 0) {
            test_process_native();
            continue;
        }
        printf("backend %s\n", b);
        test_runs(b);
        test_prepared(b);
        test_prepare_options(b);
        test_concurrent(b);
    }
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
