// Chat templates: turns OpenAI-style messages into prompt text.
//
// Strata does not run Jinja. It recognizes the common templates stored in
// GGUF `tokenizer.chat_template` by signature and renders them natively:
//   - Llama 3 (`<|start_header_id|>`): <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
//   - ChatML / Qwen (`<|im_start|>`): <|im_start|>role\ncontent<|im_end|>\n
// Anything else (no template, or an unrecognized one) falls back to
// ChatML-style text, with "<|im_end|>" added as a stop string because such a
// model may not know it as a special token. Every rendering ends with the
// assistant's header so the model continues as the assistant.
//
// The BOS token is not part of the rendered text; the tokenizer adds it.
//
// Thread-safety: immutable after construction.
#pragma once

#include <string>
#include <vector>

namespace strata {

struct ChatMessage {
  std::string role;     // system, user, assistant, developer, tool
  std::string content;
};

enum class ChatTemplateKind { kLlama3, kChatMl, kFallback };

class ChatTemplate {
 public:
  // `source` is the GGUF tokenizer.chat_template text ("" if absent).
  explicit ChatTemplate(const std::string& source);
  ChatTemplateKind kind() const { return kind_; }
  const char* name() const;
  std::string Render(const std::vector<ChatMessage>& messages) const;
  // Stop strings the rendering needs beyond the model's end-of-generation tokens.
  std::vector<std::string> extra_stops() const;

 private:
  ChatTemplateKind kind_;
};

}  // namespace strata
