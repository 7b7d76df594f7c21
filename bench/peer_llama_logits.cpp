// peer_llama_logits: the logits llama.cpp computes for given token ids, to check a GGUF that
// bench/peer_llamacpp.py wrote against transformers on the same Hugging Face directory.
//
// Not part of the deltamoe build: bench/peer_llamacpp.py compiles it against a llama.cpp build
// (include/llama.h, libllama.so) with `peer_llamacpp.py build`.
//
// usage: peer_llama_logits MODEL.gguf OUT.f32 TOKENS [N_GEN] [THREADS] [MODE]
//   TOKENS  comma-separated prompt token ids, fed in one batch (the prompt path) with logits
//           kept for every position; or text:STRING, tokenized by llama.cpp
//   N_GEN   greedy steps after the prompt, one token per llama_decode (the decode path, KV cache)
//   MODE    default: llama.cpp's defaults (f16 KV cache, flash attention auto, which is on for
//           the CPU and rounds attention to f16 even with an f32 cache); exact: f32 KV cache and
//           no flash attention, for a check at f32 precision
//   writes  (n_prompt + N_GEN) rows of n_vocab f32 logits to OUT.f32: row i is the logits after
//           input position i. Prints {"n_vocab": V, "prompt": [...], "generated": [...]} on stdout.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static void quiet_log(ggml_log_level level, const char * text, void *) {
    static const bool verbose = getenv("PEER_LLAMA_VERBOSE") != nullptr;
    if (verbose || level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

static int argmax(const float * v, int n) {
    int best = 0;
    for (int i = 1; i < n; ++i) if (v[i] > v[best]) best = i;
    return best;
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf OUT.f32 TOKENS [N_GEN] [THREADS] [MODE]\n", argv[0]);
        return 2;
    }
    const char * model_path = argv[1];
    const char * out_path = argv[2];
    std::vector<llama_token> prompt;
    const std::string text = strncmp(argv[3], "text:", 5) == 0 ? std::string(argv[3] + 5) : std::string();
    for (const char * p = text.empty() ? argv[3] : ""; *p;) {
        char * end = nullptr;
        prompt.push_back((llama_token) strtol(p, &end, 10));
        if (end == p) { fprintf(stderr, "error: bad token list '%s'\n", argv[3]); return 2; }
        p = (*end == ',') ? end + 1 : end;
    }
    const int n_gen = argc > 4 ? atoi(argv[4]) : 0;
    const int threads = argc > 5 ? atoi(argv[5]) : 2;
    const std::string mode = argc > 6 ? argv[6] : "default";
    if (mode != "default" && mode != "exact") { fprintf(stderr, "error: MODE is default or exact\n"); return 2; }
    if ((prompt.empty() && text.empty()) || n_gen < 0 || threads < 1) { fprintf(stderr, "error: bad arguments\n"); return 2; }

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path, mp);
    if (!model) { fprintf(stderr, "error: cannot load %s\n", model_path); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    if (!text.empty()) {  // llama.cpp's own tokenization (with BOS when the GGUF says so)
        prompt.resize(text.size() + 8);
        const int n = llama_tokenize(vocab, text.c_str(), (int32_t) text.size(), prompt.data(), (int32_t) prompt.size(), true, false);
        if (n < 0) { fprintf(stderr, "error: tokenization failed\n"); return 1; }
        prompt.resize(n);
    }

    const int n_total = (int) prompt.size() + n_gen;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) (n_total + 16);
    cp.n_batch = cp.n_ubatch = (uint32_t) prompt.size();
    cp.n_threads = cp.n_threads_batch = threads;
    cp.no_perf = true;
    if (mode == "exact") {
        cp.type_k = cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "error: cannot create a context\n"); return 1; }

    FILE * out = fopen(out_path, "wb");
    if (!out) { fprintf(stderr, "error: cannot write %s\n", out_path); return 1; }

    llama_batch batch = llama_batch_init((int32_t) prompt.size(), 0, 1);
    batch.n_tokens = (int32_t) prompt.size();
    for (int i = 0; i < batch.n_tokens; ++i) {
        batch.token[i] = prompt[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "error: llama_decode failed on the prompt\n"); return 1; }
    for (int i = 0; i < batch.n_tokens; ++i) fwrite(llama_get_logits_ith(ctx, i), sizeof(float), n_vocab, out);

    std::vector<llama_token> generated;
    llama_token next = argmax(llama_get_logits_ith(ctx, batch.n_tokens - 1), n_vocab);
    for (int s = 0; s < n_gen; ++s) {
        generated.push_back(next);
        batch.n_tokens = 1;
        batch.token[0] = next;
        batch.pos[0] = (llama_pos) (prompt.size() + s);
        batch.n_seq_id[0] = 1;
        batch.seq_id[0][0] = 0;
        batch.logits[0] = 1;
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "error: llama_decode failed at step %d\n", s); return 1; }
        const float * row = llama_get_logits_ith(ctx, 0);
        fwrite(row, sizeof(float), n_vocab, out);
        next = argmax(row, n_vocab);
    }
    fclose(out);

    std::string js = "{\"n_vocab\": " + std::to_string(n_vocab) + ", \"prompt\": [";
    for (size_t i = 0; i < prompt.size(); ++i) js += (i ? ", " : "") + std::to_string(prompt[i]);
    js += "], \"generated\": [";
    for (size_t i = 0; i < generated.size(); ++i) js += (i ? ", " : "") + std::to_string(generated[i]);
    js += "]}";
    puts(js.c_str());

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
