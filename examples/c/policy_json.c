/* A policy from a JSON document (the schema of the README's "Policy" section), applied to a
 * program given on the command line; prints the outcome as JSON.
 *
 *   cc examples/c/policy_json.c $(pkg-config --cflags --libs sandcell) -o policy_json
 *   ./policy_json examples/hello.wat
 *   ./policy_json examples/hello.wat '{"memory": "16M", "timeout": "500ms", "fuel": 1000000}'
 */
#include <sandcell.h>
#include <stdio.h>

static const char *DEFAULT_POLICY =
    "{"
    "  \"memory\": \"32M\","
    "  \"timeout\": \"2s\","
    "  \"max_output\": \"64K\","
    "  \"env\": {\"GREETING\": \"hello\"}"
    "}";

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROGRAM [POLICY-JSON [BACKEND]]\n", argv[0]);
        return 2;
    }
    const char *json = argc > 2 ? argv[2] : DEFAULT_POLICY;
    const char *backend = argc > 3 ? argv[3] : "wasm";
    sandcell_policy_t *policy = NULL;
    sandcell_sandbox_t *sandbox = NULL;
    sandcell_program_t *program = NULL;
    sandcell_outcome_t *outcome = NULL;
    char *text = NULL;
    int rc = 1;

    sandcell_error_t *error = sandcell_policy_from_json(json, &policy);
    if (error == NULL) error = sandcell_sandbox_new(backend, policy, NULL, &sandbox);
    if (error == NULL) error = sandcell_program_from_path(argv[1], &program);
    if (error == NULL) error = sandcell_sandbox_run(sandbox, program, NULL, &outcome);
    if (error == NULL) error = sandcell_outcome_to_json(outcome, &text);
    if (error != NULL) {
        /* The kind tells a bad policy (1) from an unenforceable one (2), a missing backend (3),
         * a bad program (4), a host failure (5) or a bad argument (6). */
        fprintf(stderr, "error (kind %u): %s\n", sandcell_error_kind(error), sandcell_error_message(error));
        sandcell_error_free(error);
    } else {
        printf("%s\n", text);
        rc = 0;
    }
    sandcell_string_free(text);
    sandcell_outcome_free(outcome);
    sandcell_program_free(program);
    sandcell_sandbox_free(sandbox);
    sandcell_policy_free(policy);
    return rc;
}
