// Tests of the bounded site label of delivery metrics: the first N unknown MX sets, then "other".
#include "engine/delivery/site_labeler.h"

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace facteur::delivery {
namespace {

TEST(SiteLabelerTest, WithoutTopNEveryUnknownMxSetIsOther) {
  SiteLabeler labeler(0);
  EXPECT_EQ(labeler.Label("google"), "google");
  EXPECT_EQ(labeler.Label("google/example.com"), "google");
  EXPECT_EQ(labeler.Label("route:[smtp.example.net]:587"), "route");
  EXPECT_EQ(labeler.Label("mx:mx1.example.net,mx2.example.net"), "other");
  EXPECT_EQ(labeler.Label(""), "other");
  EXPECT_EQ(LabelOf(nullptr, "mx:mx1.example.net"), "other");
  EXPECT_EQ(LabelOf(nullptr, "outlook"), "outlook");
}

TEST(SiteLabelerTest, TheFirstNUnknownMxSetsKeepTheirKeyTheRestAreOther) {
  SiteLabeler labeler(2);
  EXPECT_EQ(labeler.Label("mx:mx.one.example"), "mx:mx.one.example");
  // A domain override of the same MX set is the same label, and does not take a place.
  EXPECT_EQ(labeler.Label("mx:mx.one.example/one.example"), "mx:mx.one.example");
  // Shipped sites, routes and "" never take a place.
  EXPECT_EQ(labeler.Label("yahoo"), "yahoo");
  EXPECT_EQ(labeler.Label("route:[127.0.0.1]:25"), "route");
  EXPECT_EQ(labeler.Label(""), "other");
  EXPECT_EQ(labeler.Label("mx:"), "other");
  EXPECT_EQ(labeler.Label("mx:mx1.two.example,mx2.two.example"),
            "mx:mx1.two.example,mx2.two.example");
  EXPECT_EQ(labeler.Label("mx:mx.three.example"), "other");
  // Labels once given are kept; "other" stays "other".
  EXPECT_EQ(labeler.Label("mx:mx.one.example"), "mx:mx.one.example");
  EXPECT_EQ(labeler.Label("mx:mx.three.example"), "other");
  EXPECT_EQ(LabelOf(&labeler, "mx:mx1.two.example,mx2.two.example"),
            "mx:mx1.two.example,mx2.two.example");
}

TEST(SiteLabelerTest, LabelGivenReadsWithoutTakingAPlace) {
  SiteLabeler labeler(1);
  EXPECT_EQ(labeler.LabelGiven("mx:mx.old.example"), "other");  // reported on, not labelled
  EXPECT_EQ(labeler.LabelGiven("google/partner.example"), "google");
  EXPECT_EQ(labeler.Label("mx:mx.new.example"), "mx:mx.new.example");  // the place is still free
  EXPECT_EQ(labeler.LabelGiven("mx:mx.new.example/new.example"), "mx:mx.new.example");
  EXPECT_EQ(labeler.Label("mx:mx.old.example"), "other");
}

TEST(SiteLabelerTest, ConcurrentCallersNeverGiveMoreThanNLabels) {
  constexpr size_t kTopN = 5;
  SiteLabeler labeler(kTopN);
  absl::Mutex mutex;
  std::set<std::string> labels;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        std::string label = labeler.Label(absl::StrCat("mx:mx", (i * 7 + t) % 50, ".example"));
        absl::MutexLock lock(&mutex);
        labels.insert(std::move(label));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(labels.size(), kTopN + 1);  // five MX sets and "other"
  EXPECT_EQ(labels.count("other"), 1u);
}

}  // namespace
}  // namespace facteur::delivery
