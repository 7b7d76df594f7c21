// `deltamoe train-tokenizer`: a byte-level BPE tokenizer.json learned from the training split
// of a text corpus (Debian's fortunes by default), as `train-lm` makes its tokenizer.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/io/output.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/io/tokenizer_train.h"

namespace {

deltamoe::cli::CommandRegistrar reg(
    "train-tokenizer", "Learn a byte-level BPE tokenizer.json from a text corpus",
    [](CLI::App& app) -> deltamoe::cli::Action {
      struct Opts {
        std::string data, out;
        int vocab = 4096;
        int64_t min_frequency = 2;
        bool json = false;
      };
      auto o = std::make_shared<Opts>();
      app.add_option("--data", o->data,
                     "UTF-8 text file (documents separated by blank lines); default: the fortune "
                     "files of " +
                         std::string(deltamoe::io::kFortunesDir));
      app.add_option("--vocab", o->vocab, "Vocabulary size, 256 bytes and <|endoftext|> included")
          ->check(CLI::Range(257, 1 << 20))
          ->capture_default_str();
      app.add_option("--min-frequency", o->min_frequency, "Merge only pairs seen this often")
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
          ->capture_default_str();
      app.add_option("--out", o->out, "Where to write tokenizer.json")->required();
      app.add_flag("--json", o->json, "Print one JSON object on stdout");
      return [o]() -> int {
        deltamoe::io::check_writable(o->out, "train-tokenizer");
        const auto t0 = std::chrono::steady_clock::now();
        const deltamoe::io::TextSplit split =
            o->data.empty() ? deltamoe::io::load_fortunes() : deltamoe::io::load_text_file(o->data);
        deltamoe::io::BpeTrainOptions opt;
        opt.vocab_size = o->vocab;
        opt.min_frequency = o->min_frequency;
        const auto r = deltamoe::io::train_bpe(split.train, opt);
        // What we write must load: parse it back before it replaces anything.
        const auto tok = deltamoe::io::Tokenizer::from_json(r.tokenizer_json, o->out);
        deltamoe::cli::write_file_atomic(o->out, r.tokenizer_json + "\n");
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        int64_t tokens = 0, bytes = 0;
        for (const std::string& d : split.validation) {
          tokens += static_cast<int64_t>(tok->encode(d, false).size());
          bytes += static_cast<int64_t>(d.size());
        }
        const double bpt = tokens ? static_cast<double>(bytes) / static_cast<double>(tokens) : 0.0;
        if (o->json) {
          nlohmann::ordered_json j{{"out", o->out},
                                   {"source", split.source},
                                   {"train_documents", split.train.size()},
                                   {"validation_documents", split.validation.size()},
                                   {"test_documents", split.test.size()},
                                   {"train_bytes", r.bytes},
                                   {"distinct_words", r.words},
                                   {"vocab_size", r.vocab_size},
                                   {"merges", r.merges},
                                   {"validation_bytes_per_token", bpt},
                                   {"time_s", s}};
          std::cout << j.dump(2) << "\n";
        } else {
          std::printf(
              "%s: vocab %d (%lld merges) from %zu training documents (%lld bytes) of %s;"
              " validation: %.2f bytes per token; %.1f s\n",
              o->out.c_str(), r.vocab_size, static_cast<long long>(r.merges), split.train.size(),
              static_cast<long long>(r.bytes), split.source.c_str(), bpt, s);
        }
        return 0;
      };
    });

}  // namespace
