#include "engine/scheduler.h"

#include <algorithm>
#include <chrono>

namespace strata {

using Clock = std::chrono::steady_clock;

struct Scheduler::Sequence {
  Sequence(const Tokenizer& tok, const SamplingParams& sp, bool continues_text)
      : sampler(sp), decoder(tok, continues_text) {}
  uint64_t id = 0;
  std::vector<TokenId> tokens;  // prompt, then every sampled token
  int64_t n_prompt = 0;
  int64_t n_computed = 0;       // positions whose KV is in the slot
  int slot = -1;
  bool admitted_once = false;
  RequestOptions options;
  RequestCallback callback;
  Sampler sampler;
  StreamDecoder decoder;
  std::string pending;          // decoded text held back (could start a stop string)
  RequestOutput out;            // accumulates until the next delivery
  int64_t generated = 0;
  Clock::time_point arrival;
  int64_t chunk = 0;            // tokens planned for this step
  // KV cache store: the load in progress, before layer 0 is placed
  // (loading) or after, until the forward pass it finishes in.
  std::shared_ptr<StoreLoad> load;
  bool loading = false;
  bool discard = false;         // this step's output for s is void (a load failed mid-pass)
  bool store_reported = false;  // out.store_cached_tokens set
  size_t store_next_chunk = 0;  // chunks below this are in the store (or were handed to it)
};

Scheduler::Scheduler(const Model& model, ManagedKvCache& kv, const SchedulerOptions& options)
    : model_(model), kv_(kv), options_(options), ctx_(model, options.n_threads) {}

Expected<std::unique_ptr<Scheduler>> Scheduler::Create(const Model& model, ManagedKvCache& kv,
                                                       const SchedulerOptions& options) {
  const ModelConfig& c = model.config();
  if (kv.n_layers() != c.n_layers || kv.kv_dim() != c.kv_dim()) {
    return Status::InvalidArgument("the KV memory's shape does not match the model");
  }
  if (options.n_threads < 1 || options.n_threads > 1024) return Status::InvalidArgument("thread count must be in 1..1024");
  if (options.step_tokens < kv.max_seqs()) {
    return Status::InvalidArgument("the step token budget (" + std::to_string(options.step_tokens) +
                                   ") must be at least the number of slots (" + std::to_string(kv.max_seqs()) +
                                   ") so every running sequence decodes each step");
  }
  std::unique_ptr<Scheduler> sched(new Scheduler(model, kv, options));
  if (options.kv_store) {
    // A finished load wakes the engine thread (it may have nothing else to do).
    options.kv_store->SetReadyListener([p = sched.get()] {
      std::lock_guard<std::mutex> lock(p->mu_);
      p->cv_.notify_all();
    });
  }
  return sched;
}

Scheduler::~Scheduler() {
  Stop();
  for (auto& s : running_) DropLoad(*s);
  if (options_.kv_store) options_.kv_store->SetReadyListener(nullptr);
}

Expected<uint64_t> Scheduler::Submit(std::vector<TokenId> prompt, const RequestOptions& options,
                                     RequestCallback callback) {
  STRATA_RETURN_IF_ERROR(options.sampling.Validate());
  if (prompt.empty()) return Status::InvalidArgument("the prompt is empty");
  if (options.max_tokens < 1) return Status::InvalidArgument("max_tokens must be at least 1");
  const int64_t ctx = kv_.max_positions();
  if (static_cast<int64_t>(prompt.size()) >= ctx) {
    return Status::OutOfRange("the prompt has " + std::to_string(prompt.size()) + " tokens but the context holds " +
                              std::to_string(ctx) + " (shorten the prompt)");
  }
  const int vocab = model_.config().vocab_size;
  for (TokenId t : prompt) {
    if (t < 0 || t >= vocab) return Status::InvalidArgument("token id " + std::to_string(t) + " is outside the vocabulary");
  }
  auto s = std::make_unique<Sequence>(model_.tokenizer(), options.sampling,
                                      StreamDecoder::Continues(model_.tokenizer(), prompt));
  s->n_prompt = static_cast<int64_t>(prompt.size());
  s->tokens = std::move(prompt);
  s->options = options;
  s->callback = std::move(callback);
  s->arrival = Clock::now();
  s->out.prompt_tokens = s->n_prompt;
  std::lock_guard<std::mutex> lock(mu_);
  s->id = next_id_++;
  s->out.id = s->id;
  const uint64_t id = s->id;
  submitted_.push_back(std::move(s));
  ++counters_.requests_submitted;
  cv_.notify_all();
  return id;
}

void Scheduler::Cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_.insert(id);
  cv_.notify_all();
}

void Scheduler::TakeSubmissions() {
  std::unordered_set<uint64_t> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& s : submitted_) waiting_.push_back(std::move(s));
    submitted_.clear();
    cancels.swap(cancelled_);
  }
  if (cancels.empty()) return;
  for (auto& s : running_) {
    if (cancels.count(s->id)) Finish(*s, StopReason::kCancelled);
  }
  for (auto& s : waiting_) {
    if (cancels.count(s->id)) Finish(*s, StopReason::kCancelled);
  }
  std::erase_if(running_, [](const auto& s) { return s->callback == nullptr; });
  std::erase_if(waiting_, [](const auto& s) { return s->callback == nullptr; });
}

void Scheduler::Finish(Sequence& s, StopReason reason, Status error) {
  if (s.slot >= 0 && options_.kv_store && s.options.save_decode_cache && error.ok() &&
      reason != StopReason::kCancelled && !s.load) {
    // Decode-phase KV, on request: every full chunk whose KV is in the slot.
    options_.kv_store->StoreNewChunks(kv_, s.slot, s.tokens, s.n_computed, s.options.cache_salt, &s.store_next_chunk,
                                      s.n_prompt);
  }
  DropLoad(s);
  if (s.slot >= 0) {
    kv_.Clear(s.slot);
    s.slot = -1;
  }
  if (reason != StopReason::kStopString && reason != StopReason::kCancelled && error.ok()) {
    s.out.text += s.pending + s.decoder.Flush();
  }
  s.pending.clear();
  s.out.finished = true;
  s.out.stop_reason = reason;
  s.out.error = std::move(error);
  s.out.completion_tokens = s.generated;
  ++local_.requests_finished;
  if (reason == StopReason::kCancelled) ++local_.requests_cancelled;
  RequestCallback cb = std::move(s.callback);
  s.callback = nullptr;  // marks the sequence for removal
  cb(s.out);
}

void Scheduler::DropLoad(Sequence& s) {
  if (s.load && options_.kv_store) options_.kv_store->CancelLoad(s.load);
  s.load.reset();
  s.loading = false;
}

void Scheduler::PollLoads() {
  for (auto& sp : running_) {
    Sequence& s = *sp;
    if (!s.load) continue;
    if (s.loading) {
      if (!s.load->ready()) continue;
      s.loading = false;
    }
    // Layer 0 is placed; the rest arrives during the next forward pass this
    // sequence takes part in. end() only shrinks (a chunk found bad), and
    // until that pass s has computed nothing past it.
    s.n_computed = s.load->end();
    if (s.load->finished()) ConsumeLoad(s);
  }
}

void Scheduler::ConsumeLoad(Sequence& s) {
  const StoreLoad& load = *s.load;
  if (!s.store_reported) {
    s.store_reported = true;
    s.out.store_cached_tokens = load.end() - load.begin();
    s.out.store_tokens_by_tier = load.per_tier();
    local_.store_cached_prompt_tokens += static_cast<uint64_t>(load.end() - load.begin());
  }
  if (load.end() < load.planned_end()) {
    // Chunks after the first bad one are recomputed; store them again.
    const size_t good = static_cast<size_t>(load.end() / options_.kv_store->chunk_tokens());
    s.store_next_chunk = std::min(s.store_next_chunk, good);
  }
  options_.kv_store->CompleteLoad(load);
  s.load.reset();
}

void Scheduler::Preempt(Sequence& s) {
  DropLoad(s);
  kv_.Clear(s.slot);
  s.slot = -1;
  s.n_computed = 0;
  s.chunk = 0;
  ++local_.preemptions;
}

bool Scheduler::Accept(Sequence& s, TokenId token) {
  const Tokenizer& tok = model_.tokenizer();
  if (!s.options.ignore_eos && tok.IsEndOfGeneration(token)) {
    Finish(s, StopReason::kEndOfGeneration);
    return true;
  }
  if (s.generated == 0) s.out.ttft_seconds = std::chrono::duration<double>(Clock::now() - s.arrival).count();
  s.tokens.push_back(token);
  ++s.generated;
  ++local_.generated_tokens;
  s.out.tokens.push_back(token);
  s.pending += s.decoder.Push(token);
  size_t hold = 0;
  const size_t at = FindStop(s.pending, s.options.stop_strings, &hold);
  if (at != std::string::npos) {
    s.out.text.append(s.pending, 0, at);
    s.pending.clear();
    Finish(s, StopReason::kStopString);
    return true;
  }
  s.out.text.append(s.pending, 0, s.pending.size() - hold);
  s.pending.erase(0, s.pending.size() - hold);
  if (s.generated >= s.options.max_tokens) {
    Finish(s, StopReason::kLength);
    return true;
  }
  if (static_cast<int64_t>(s.tokens.size()) > kv_.max_positions()) {
    Finish(s, StopReason::kContextFull);
    return true;
  }
  return false;
}

Expected<bool> Scheduler::Step() {
  TakeSubmissions();
  if (options_.kv_store) PollLoads();
  int64_t budget = options_.step_tokens;
  std::vector<Sequence*> plan;

  // Makes room for s to hold `positions`, preempting the most recently
  // arrived other running sequences (never an older one: the oldest always
  // makes progress, so nothing starves).
  enum class Room { kOk, kYield, kAlone };
  auto reserve = [&](Sequence& s, int64_t positions) -> Room {
    for (;;) {
      Status st = kv_.Reserve(s.slot, positions);
      if (st.ok()) return Room::kOk;
      Sequence* victim = nullptr;
      for (auto& r : running_) {
        if (r.get() != &s && r->slot >= 0 && (!victim || r->arrival > victim->arrival)) victim = r.get();
      }
      if (!victim) return Room::kAlone;
      if (victim->arrival < s.arrival) return Room::kYield;
      if (victim->chunk > 0) {
        budget += victim->chunk;
        std::erase(plan, victim);
      }
      Preempt(*victim);
    }
  };

  // Running sequences: decodes first, then unfinished prefills, oldest first.
  std::stable_sort(running_.begin(), running_.end(), [](const auto& a, const auto& b) { return a->arrival < b->arrival; });
  for (int pass = 0; pass < 2; ++pass) {
    for (auto& sp : running_) {
      Sequence& s = *sp;
      if (s.slot < 0 || s.chunk > 0 || s.loading) continue;
      const int64_t remaining = static_cast<int64_t>(s.tokens.size()) - s.n_computed;
      if ((pass == 0) != (remaining == 1)) continue;
      const int64_t chunk = std::min(remaining, budget);
      if (chunk <= 0) continue;
      const Room room = reserve(s, s.n_computed + chunk);
      if (room == Room::kAlone) {
        // Alone and still out of memory: the sequence outgrew the budget.
        Finish(s, StopReason::kContextFull);
        continue;
      }
      if (room == Room::kYield) {
        Preempt(s);
        continue;
      }
      s.chunk = chunk;
      budget -= chunk;
      plan.push_back(&s);
    }
  }
  // Preempted sequences go back to the queue in arrival order.
  for (auto& sp : running_) {
    if (sp->callback && sp->slot < 0) {
      auto pos = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& w) { return w->arrival > sp->arrival; });
      waiting_.insert(pos, std::move(sp));
    }
  }
  std::erase_if(running_, [](const auto& s) { return s == nullptr || s->callback == nullptr; });

  // Admission, strictly in arrival order.
  while (!waiting_.empty() && budget > 0) {
    Sequence& s = *waiting_.front();
    const int slot = kv_.AcquireSlot();
    if (slot < 0) break;
    s.slot = slot;
    const int64_t total = static_cast<int64_t>(s.tokens.size());
    // At least the last token is computed: its logits give the next token.
    const int64_t cached = kv_.AttachCachedPrefix(slot, s.tokens, s.options.cache_salt, total - 1);
    // Admission control: the whole prompt plus the first output token must
    // fit now (memory for later tokens is found, or made by preemption, as
    // the sequence grows).
    const int64_t g = kv_.granule_positions();
    const int64_t need = (total + 1 + g - 1) / g * g;
    const bool fits = kv_.BackedPositions(slot) + kv_.AvailablePositions() >= need;
    // The KV cache store may hold more of the prompt than engine memory.
    KvStoreConnector::LoadPlan load;
    if (fits && options_.kv_store) load = options_.kv_store->PlanLoad(s.tokens, s.options.cache_salt, cached);
    const int64_t chunk = load.load ? 0 : std::min(total - cached, budget);
    const int64_t reserve_to = load.load ? load.load->planned_end() : cached + chunk;
    if (!fits || !kv_.Reserve(slot, reserve_to).ok()) {
      if (load.load) options_.kv_store->CancelLoad(load.load);
      kv_.Clear(slot);
      s.slot = -1;
      if (running_.empty() && plan.empty()) {
        auto victim = std::move(waiting_.front());
        waiting_.pop_front();
        Finish(*victim, StopReason::kLength,
               Status::ResourceExhausted("the request needs KV for " + std::to_string(total + 1) +
                                         " positions, more than the whole KV budget holds; raise --kv-budget"));
        continue;
      }
      break;
    }
    s.n_computed = cached;
    s.store_next_chunk = std::max(s.store_next_chunk, load.stored_chunks);
    if (!s.admitted_once) {
      s.admitted_once = true;
      s.out.cached_tokens = cached;
      local_.cached_prompt_tokens += static_cast<uint64_t>(cached);
      local_.prompt_tokens += static_cast<uint64_t>(s.n_prompt);
    }
    if (load.load) {
      // Loading: holds its slot and reservation; joins prefill once layer 0
      // is placed. (A load that cannot start leaves s to plain prefill from
      // the next step on.)
      if (options_.kv_store->StartLoad(load.load, kv_, slot).ok()) {
        s.load = std::move(load.load);
        s.loading = true;
      }
      s.chunk = 0;
      running_.push_back(std::move(waiting_.front()));
      waiting_.pop_front();
      continue;
    }
    s.chunk = chunk;
    budget -= chunk;
    plan.push_back(&s);
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }

  if (plan.empty()) {
    PublishCounters();
    return false;
  }
  batch_.clear();
  for (Sequence* s : plan) {
    batch_.push_back(BatchSeq{s->slot, std::span<const TokenId>(s->tokens.data() + s->n_computed, static_cast<size_t>(s->chunk)),
                              s->n_computed, false});
  }
  // What each sequence needs next step, so KV memory can get it ready while
  // this pass runs (the virtual memory maps and faults pages meanwhile).
  for (Sequence* s : plan) {
    const int64_t after = s->n_computed + s->chunk;
    const int64_t left = static_cast<int64_t>(s->tokens.size()) - after;
    kv_.PrepareAhead(s->slot, after + (left > 0 ? std::min(left, options_.step_tokens) : 1));
  }
  // Loads still arriving are placed layer by layer during this pass.
  ForwardHooks* hooks = nullptr;
  std::vector<std::shared_ptr<StoreLoad>> loads;
  if (options_.kv_store) {
    for (Sequence* s : plan) {
      if (s->load) loads.push_back(s->load);
    }
    if (!loads.empty()) hooks = options_.kv_store->PrepareStep(loads);
  }
  Expected<std::span<const float>> logits = ctx_.Forward(batch_, kv_, hooks);
  if (!loads.empty()) {
    options_.kv_store->FinishStep();
    for (Sequence* s : plan) {
      if (!s->load) continue;
      if (s->load->end() < s->n_computed) {
        // A chunk failed after this pass had used its earlier layers: what
        // the pass computed for s is thrown away; s recomputes from end().
        s->n_computed = s->load->end();
        s->chunk = 0;
        s->discard = true;
        options_.kv_store->NoteDiscardedPass();
      }
      ConsumeLoad(*s);
    }
  }
  if (!logits.ok()) {
    for (Sequence* s : plan) Finish(*s, StopReason::kLength, logits.status());
    std::erase_if(running_, [](const auto& s) { return s->callback == nullptr; });
    PublishCounters();
    return logits.take_status();
  }
  ++local_.steps;
  const size_t vocab = static_cast<size_t>(model_.config().vocab_size);
  for (size_t i = 0; i < plan.size(); ++i) {
    Sequence& s = *plan[i];
    if (s.discard) {
      s.discard = false;
      continue;
    }
    s.n_computed += s.chunk;
    s.chunk = 0;
    kv_.PublishPrefix(s.slot, std::span<const TokenId>(s.tokens.data(), static_cast<size_t>(s.n_computed)));
    if (options_.kv_store) {
      // Newly completed full prompt chunks go to the store (it writes in the
      // background; encoding is a copy).
      const int64_t upto = std::min(s.n_computed, s.n_prompt);
      if (static_cast<int64_t>(s.store_next_chunk + 1) * options_.kv_store->chunk_tokens() <= upto) {
        options_.kv_store->StoreNewChunks(kv_, s.slot, s.tokens, upto, s.options.cache_salt, &s.store_next_chunk,
                                          s.n_prompt);
      }
    }
    if (s.n_computed < static_cast<int64_t>(s.tokens.size())) continue;  // prefill continues next step
    const TokenId next = s.sampler.Sample(logits->subspan(i * vocab, vocab), s.tokens);
    if (!Accept(s, next) && (!s.out.text.empty() || !s.out.tokens.empty())) {
      s.callback(s.out);
      s.out.text.clear();
      s.out.tokens.clear();
    }
  }
  std::erase_if(running_, [](const auto& s) { return s->callback == nullptr; });
  PublishCounters();
  return true;
}

void Scheduler::PublishCounters() {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t submitted = counters_.requests_submitted;
  counters_ = local_;
  counters_.requests_submitted = submitted;
  counters_.running = static_cast<int>(running_.size());
  counters_.waiting = static_cast<int>(waiting_.size() + submitted_.size());
  counters_.loading = static_cast<int>(std::count_if(running_.begin(), running_.end(), [](const auto& s) { return s->loading; }));
  counters_.kv = kv_.stats();
}

SchedulerCounters Scheduler::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

Status Scheduler::RunUntilIdle() {
  for (;;) {
    STRATA_ASSIGN_OR_RETURN(bool ran, Step());
    if (ran) continue;
    if (options_.kv_store && options_.kv_store->HasPendingLoads()) {
      options_.kv_store->WaitForLoads(std::chrono::milliseconds(20));
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (submitted_.empty() && running_.empty() && waiting_.empty()) return Status::Ok();
  }
}

void Scheduler::Start() {
  if (thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = false;
  }
  thread_ = std::thread([this] {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !submitted_.empty() || !cancelled_.empty() || !running_.empty() || !waiting_.empty(); });
        if (stop_) break;
      }
      auto ran = Step();
      if (ran.ok() && !*ran) {
        // Work is queued but nothing could run (waiting for memory that only
        // a cancellation or Trim can free): do not spin.
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, std::chrono::milliseconds(5));
      }
    }
    // Whatever is left is cancelled so every callback hears the end.
    TakeSubmissions();
    for (auto& s : running_) Finish(*s, StopReason::kCancelled);
    for (auto& s : waiting_) Finish(*s, StopReason::kCancelled);
    running_.clear();
    waiting_.clear();
    PublishCounters();
  });
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace strata
