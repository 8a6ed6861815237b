/* The sandcell hello world in C: run a WebAssembly module in the wasm backend, stream its output
 * as it is produced, and report how it ended.
 *
 *   cc examples/c/hello.c $(pkg-config --cflags --libs sandcell) -o hello
 *   ./hello examples/hello.wat
 */
#include <sandcell.h>
#include <stdio.h>

static void on_output(void *user_data, uint32_t stream, const uint8_t *data, size_t len) {
    (void)user_data;
    fwrite(data, 1, len, stream == SANDCELL_STREAM_STDERR ? stderr : stdout);
}

/* Prints and frees an error; returns 1 if there was one. */
static int failed(sandcell_error_t *error, const char *what) {
    if (error == NULL) return 0;
    fprintf(stderr, "%s: %s\n", what, sandcell_error_message(error));
    sandcell_error_free(error);
    return 1;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "examples/hello.wat";
    sandcell_policy_t *policy = NULL;
    sandcell_sandbox_t *sandbox = NULL;
    sandcell_program_t *program = NULL;
    sandcell_outcome_t *outcome = NULL;
    int rc = 1;

    /* The library found at run time must have the ABI this program was compiled for (its SONAME
     * already says so, unless it was loaded by path). */
    if (sandcell_abi_version() != SANDCELL_ABI_VERSION) {
        fprintf(stderr, "libsandcell has ABI %u, this program needs %u\n", sandcell_abi_version(),
                (unsigned)SANDCELL_ABI_VERSION);
        return 1;
    }
    if (failed(sandcell_policy_new(&policy), "policy")) goto out;
    if (failed(sandcell_policy_set_memory(policy, 64u << 20), "memory")) goto out;
    if (failed(sandcell_policy_set_timeout_ms(policy, 2000), "timeout")) goto out;
    if (failed(sandcell_sandbox_new("wasm", policy, NULL, &sandbox), "sandbox")) goto out;
    if (failed(sandcell_program_from_path(path, &program), "program")) goto out;

    /* Extensible structs start with their size; the rest zeroed. */
    sandcell_run_options_t options = {.size = sizeof(sandcell_run_options_t)};
    options.on_output = on_output;
    if (failed(sandcell_sandbox_run(sandbox, program, &options, &outcome), "run")) goto out;

    uint32_t status = 0;
    int32_t code = 0;
    const char *kind = NULL;
    if (failed(sandcell_outcome_status(outcome, &status, &code), "status")) goto out;
    if (failed(sandcell_outcome_kind(outcome, &kind), "kind")) goto out;
    fprintf(stderr, "[sandcell %s] %s", sandcell_version(), kind);
    if (status == SANDCELL_STATUS_EXITED) fprintf(stderr, " (code %d)", code);
    fprintf(stderr, "\n");
    rc = status == SANDCELL_STATUS_EXITED ? code : 1;

out:
    sandcell_outcome_free(outcome);
    sandcell_program_free(program);
    sandcell_sandbox_free(sandbox);
    sandcell_policy_free(policy);
    return rc;
}
