// Factories and setters shared by the tokenizer sources (private to src/io).
#pragma once

#include <memory>
#include <string>

#include "deltamoe/io/tokenizer.h"

namespace deltamoe::io {

/// Loads a SentencePiece model file (tokenizer_spm.cpp).
std::unique_ptr<Tokenizer> make_spm_tokenizer(const std::string& path);

/// Lets the loader override bos / eos from tokenizer_config.json.
struct TokenizerAccess {
  static void set_special_ids(Tokenizer& t, int32_t bos, int32_t eos) {
    t.bos_id_ = bos;
    t.eos_id_ = eos;
  }
};

}  // namespace deltamoe::io
