#include "server/chat_template.h"

namespace strata {

ChatTemplate::ChatTemplate(const std::string& source) {
  if (source.find("<|start_header_id|>") != std::string::npos) {
    kind_ = ChatTemplateKind::kLlama3;
  } else if (source.find("<|im_start|>") != std::string::npos) {
    kind_ = ChatTemplateKind::kChatMl;
  } else {
    kind_ = ChatTemplateKind::kFallback;
  }
}

const char* ChatTemplate::name() const {
  switch (kind_) {
    case ChatTemplateKind::kLlama3: return "llama3";
    case ChatTemplateKind::kChatMl: return "chatml";
    case ChatTemplateKind::kFallback: return "fallback-chatml";
  }
  return "?";
}

std::string ChatTemplate::Render(const std::vector<ChatMessage>& messages) const {
  std::string out;
  if (kind_ == ChatTemplateKind::kLlama3) {
    for (const ChatMessage& m : messages) {
      out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
    }
    out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
  }
  for (const ChatMessage& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  out += "<|im_start|>assistant\n";
  return out;
}

std::vector<std::string> ChatTemplate::extra_stops() const {
  if (kind_ == ChatTemplateKind::kFallback) return {"<|im_end|>"};
  return {};
}

}  // namespace strata
