// Scheduler: continuous batching gives every request the greedy output it
// gets alone, over paged (with and without prefix caching) and virtual KV
// memory; preemption, cancellation, admission control and FIFO order.
#include <gtest/gtest.h>

#include <map>

#include "engine/generator.h"
#include "engine/scheduler.h"
#include "kv/paged_kv_cache.h"
#include "kv/virtual_kv_cache.h"
#include "model/model.h"
#include "test_util.h"

namespace strata {
namespace {

using testing::Python;
using testing::RunCommand;
using testing::SourceDir;

std::string ServeModel() { return testing::TinyLlama("serve"); }

const Model& TheModel() {
  static std::unique_ptr<Model> model = [] {
    auto m = Model::Load(ServeModel());
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? std::move(*m) : nullptr;
  }();
  return *model;
}

std::vector<TokenId> Prompt(int n, int seed, int shared_prefix = 0) {
  std::vector<TokenId> p;
  for (int i = 0; i < n; ++i) {
    const int s = i < shared_prefix ? 1000 : seed;
    p.push_back(static_cast<TokenId>(3 + (s * 131 + i * 17 + (i * i) % 7) % 290));
  }
  return p;
}

RequestOptions Greedy(int max_tokens) {
  RequestOptions o;
  o.max_tokens = max_tokens;
  o.sampling.temperature = 0;
  o.ignore_eos = true;
  return o;
}

std::vector<TokenId> Alone(const std::vector<TokenId>& prompt, int max_tokens) {
  auto gen = Generator::Create(TheModel(), 2, 512);
  EXPECT_TRUE(gen.ok());
  GenerateOptions go;
  go.max_tokens = max_tokens;
  go.sampling.temperature = 0;
  go.ignore_eos = true;
  auto r = (*gen)->Generate(prompt, go);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r->output_tokens;
}

struct Outcome {
  std::vector<TokenId> tokens;
  std::string text;
  RequestOutput last;
  int deliveries = 0;
};

std::unique_ptr<ManagedKvCache> MakeKv(const std::string& kind, size_t budget, int max_seqs, bool prefix = false) {
  const ModelConfig& c = TheModel().config();
  if (kind == "virtual") {
    VirtualKvOptions o;
    o.n_layers = c.n_layers;
    o.kv_dim = c.kv_dim();
    o.max_seqs = max_seqs;
    o.max_positions = 512;
    o.budget_bytes = budget;
    auto kv = VirtualKvCache::Create(o);
    EXPECT_TRUE(kv.ok()) << kv.status().ToString();
    return std::move(*kv);
  }
  PagedKvOptions o;
  o.n_layers = c.n_layers;
  o.kv_dim = c.kv_dim();
  o.max_seqs = max_seqs;
  o.max_positions = 512;
  o.budget_bytes = budget;
  o.prefix_caching = prefix;
  o.model_fingerprint = "tiny";
  auto kv = PagedKvCache::Create(o);
  EXPECT_TRUE(kv.ok()) << kv.status().ToString();
  return std::move(*kv);
}

// Runs all prompts through one scheduler at once; returns per-request outcomes.
std::vector<Outcome> RunAll(ManagedKvCache& kv, const std::vector<std::vector<TokenId>>& prompts, int max_tokens,
                            int64_t step_tokens, SchedulerCounters* counters = nullptr) {
  SchedulerOptions so;
  so.step_tokens = step_tokens;
  so.n_threads = 2;
  auto sched = Scheduler::Create(TheModel(), kv, so);
  EXPECT_TRUE(sched.ok()) << sched.status().ToString();
  std::vector<Outcome> out(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto id = (*sched)->Submit(prompts[i], Greedy(max_tokens), [&out, i](const RequestOutput& o) {
      out[i].tokens.insert(out[i].tokens.end(), o.tokens.begin(), o.tokens.end());
      out[i].text += o.text;
      out[i].last = o;
      ++out[i].deliveries;
    });
    EXPECT_TRUE(id.ok());
  }
  Status st = (*sched)->RunUntilIdle();
  EXPECT_TRUE(st.ok()) << st.ToString();
  if (counters) *counters = (*sched)->counters();
  return out;
}

TEST(SchedulerTest, ConcurrentRequestsMatchRunningAloneOnEveryKvMemory) {
  std::vector<std::vector<TokenId>> prompts;
  const int n = testing::Sanitized() ? 5 : 10;
  for (int i = 0; i < n; ++i) prompts.push_back(Prompt(3 + i * 23 % 140, i));
  const int max_tokens = 12;
  std::vector<std::vector<TokenId>> expected;
  for (const auto& p : prompts) expected.push_back(Alone(p, max_tokens));
  for (const std::string kind : {"paged", "virtual"}) {
    auto kv = MakeKv(kind, 8u << 20, 4);
    SchedulerCounters c;
    auto got = RunAll(*kv, prompts, max_tokens, 48, &c);
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(got[i].tokens, expected[i]) << kind << " request " << i;
      EXPECT_TRUE(got[i].last.finished);
      EXPECT_EQ(got[i].last.stop_reason, StopReason::kLength);
      EXPECT_EQ(got[i].last.completion_tokens, max_tokens);
      EXPECT_EQ(got[i].last.prompt_tokens, static_cast<int64_t>(prompts[i].size()));
      // Streamed text is what a StreamDecoder makes of the tokens (bytes that
      // cannot become UTF-8 turn into U+FFFD).
      StreamDecoder dec(TheModel().tokenizer());
      std::string text;
      for (TokenId t : expected[i]) text += dec.Push(t);
      text += dec.Flush();
      EXPECT_EQ(got[i].text, text) << kind;
    }
    EXPECT_EQ(c.requests_finished, prompts.size());
    EXPECT_EQ(c.generated_tokens, prompts.size() * max_tokens);
    EXPECT_EQ(kv->used_bytes(), 0u) << kind;
    kv->Trim();
    EXPECT_EQ(kv->committed_bytes(), 0u) << kind;
  }
}

TEST(SchedulerTest, PreemptionUnderTightBudgetKeepsOutputs) {
  std::vector<std::vector<TokenId>> prompts;
  for (int i = 0; i < 6; ++i) prompts.push_back(Prompt(20 + 7 * i, 50 + i));
  const int max_tokens = 40;
  std::vector<std::vector<TokenId>> expected;
  for (const auto& p : prompts) expected.push_back(Alone(p, max_tokens));
  for (const std::string kind : {"paged", "virtual"}) {
    // Room for about three sequences' worth of positions at once.
    const ModelConfig& mc = TheModel().config();
    const size_t per_pos = static_cast<size_t>(mc.kv_dim()) * 2 * 2 * static_cast<size_t>(mc.n_layers);
    auto kv = MakeKv(kind, per_pos * 16 * 16, 6);
    SchedulerCounters c;
    auto got = RunAll(*kv, prompts, max_tokens, 64, &c);
    for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i].tokens, expected[i]) << kind << " request " << i;
    EXPECT_GT(c.preemptions, 0u) << kind;
    EXPECT_EQ(kv->used_bytes(), 0u);
  }
}

TEST(SchedulerTest, PrefixCachingGivesIdenticalOutputAndCountsHits) {
  std::vector<std::vector<TokenId>> prompts;
  for (int i = 0; i < 6; ++i) prompts.push_back(Prompt(70 + 5 * i, 200 + i, /*shared_prefix=*/64));
  const int max_tokens = 10;
  auto off = MakeKv("paged", 8u << 20, 2, false);
  auto on = MakeKv("paged", 8u << 20, 2, true);
  SchedulerCounters c_off, c_on;
  auto a = RunAll(*off, prompts, max_tokens, 64, &c_off);
  auto b = RunAll(*on, prompts, max_tokens, 64, &c_on);
  int64_t cached = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(a[i].tokens, b[i].tokens) << "request " << i;
    EXPECT_EQ(a[i].last.cached_tokens, 0);
    cached += b[i].last.cached_tokens;
  }
  EXPECT_EQ(c_off.cached_prompt_tokens, 0u);
  EXPECT_GE(cached, 4 * 64);  // all but the first pair hit the shared prefix
  EXPECT_EQ(c_on.cached_prompt_tokens, static_cast<uint64_t>(cached));
  EXPECT_GT(c_on.kv.prefix_hit_tokens, 0u);
  // A second run of the same prompts hits even more (whole prompts cached).
  auto again = RunAll(*on, prompts, max_tokens, 64, &c_on);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(again[i].tokens, a[i].tokens);
    EXPECT_GE(again[i].last.cached_tokens, 64);
  }
  // Another tenant's salt never sees them.
  SchedulerOptions so;
  so.step_tokens = 64;
  auto sched = Scheduler::Create(TheModel(), *on, so);
  ASSERT_TRUE(sched.ok());
  RequestOptions ro = Greedy(2);
  ro.cache_salt = "tenant-b";
  RequestOutput last;
  ASSERT_TRUE((*sched)->Submit(prompts[0], ro, [&](const RequestOutput& o) { last = o; }).ok());
  ASSERT_TRUE((*sched)->RunUntilIdle().ok());
  EXPECT_EQ(last.cached_tokens, 0);
  EXPECT_EQ(on->used_bytes(), 0u);
}

TEST(SchedulerTest, CancellationFreesKvAndReportsCancelled) {
  auto kv = MakeKv("paged", 8u << 20, 4, true);
  SchedulerOptions so;
  so.step_tokens = 32;
  auto sched = Scheduler::Create(TheModel(), *kv, so);
  ASSERT_TRUE(sched.ok());
  std::map<uint64_t, RequestOutput> last;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) {
    auto id = (*sched)->Submit(Prompt(40, i), Greedy(200), [&](const RequestOutput& o) { last[o.id] = o; });
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  for (int i = 0; i < 5; ++i) ASSERT_TRUE((*sched)->Step().ok());
  (*sched)->Cancel(ids[1]);
  (*sched)->Cancel(12345);  // unknown: ignored
  ASSERT_TRUE((*sched)->Step().ok());
  EXPECT_TRUE(last[ids[1]].finished);
  EXPECT_EQ(last[ids[1]].stop_reason, StopReason::kCancelled);
  (*sched)->Cancel(ids[0]);
  (*sched)->Cancel(ids[2]);
  ASSERT_TRUE((*sched)->RunUntilIdle().ok());
  EXPECT_EQ(kv->used_bytes(), 0u);
  EXPECT_EQ((*sched)->counters().requests_cancelled, 3u);
}

TEST(SchedulerTest, AdmissionControlIsFifoAndRejectsWhatCanNeverFit) {
  const ModelConfig& mc = TheModel().config();
  const size_t per_pos = static_cast<size_t>(mc.kv_dim()) * 2 * 2 * static_cast<size_t>(mc.n_layers);
  auto kv = MakeKv("paged", per_pos * 16 * 8, 4);  // 128 positions in all
  SchedulerOptions so;
  so.step_tokens = 16;
  auto sched = Scheduler::Create(TheModel(), *kv, so);
  ASSERT_TRUE(sched.ok());
  std::vector<uint64_t> finish_order;
  std::map<uint64_t, RequestOutput> last;
  auto cb = [&](const RequestOutput& o) {
    last[o.id] = o;
    if (o.finished) finish_order.push_back(o.id);
  };
  auto big = (*sched)->Submit(Prompt(300, 9), Greedy(4), cb);  // more than the budget
  ASSERT_TRUE(big.ok());
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(*(*sched)->Submit(Prompt(50, i), Greedy(8), cb));
  ASSERT_TRUE((*sched)->RunUntilIdle().ok());
  EXPECT_EQ(last[*big].error.code(), StatusCode::kResourceExhausted) << last[*big].error.ToString();
  // Equal-length requests finish in arrival order.
  ASSERT_EQ(finish_order.size(), 5u);
  EXPECT_EQ(std::vector<uint64_t>(finish_order.begin() + 1, finish_order.end()), ids);
  EXPECT_EQ(kv->used_bytes(), 0u);
  // Bad requests are refused up front.
  EXPECT_EQ((*sched)->Submit({}, Greedy(4), cb).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*sched)->Submit(Prompt(512, 1), Greedy(4), cb).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ((*sched)->Submit({5, 9999}, Greedy(4), cb).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*sched)->Submit({5}, Greedy(0), cb).status().code(), StatusCode::kInvalidArgument);
}

TEST(SchedulerTest, BackgroundThreadServesConcurrentSubmitters) {
  auto kv = MakeKv("virtual", 8u << 20, 8);
  SchedulerOptions so;
  so.step_tokens = 64;
  auto sched = Scheduler::Create(TheModel(), *kv, so);
  ASSERT_TRUE(sched.ok());
  (*sched)->Start();
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  std::vector<std::vector<TokenId>> got(16);
  std::vector<std::thread> clients;
  for (int i = 0; i < 16; ++i) {
    clients.emplace_back([&, i] {
      auto id = (*sched)->Submit(Prompt(10 + i, 300 + i), Greedy(6), [&, i](const RequestOutput& o) {
        std::lock_guard<std::mutex> lock(mu);
        got[static_cast<size_t>(i)].insert(got[static_cast<size_t>(i)].end(), o.tokens.begin(), o.tokens.end());
        if (o.finished) {
          ++done;
          cv.notify_all();
        }
      });
      EXPECT_TRUE(id.ok());
    });
  }
  for (auto& t : clients) t.join();
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return done == 16; }));
  }
  (*sched)->Stop();
  for (int i = 0; i < 16; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], Alone(Prompt(10 + i, 300 + i), 6)) << i;
  EXPECT_EQ(kv->used_bytes(), 0u);
}

}  // namespace
}  // namespace strata
