#include "engine/io/socket_address.h"

#include <netinet/in.h>

#include "gtest/gtest.h"

namespace facteur::io {
namespace {

TEST(SocketAddressTest, ParsesAndFormats) {
  auto v4 = ParseListenAddress("127.0.0.1:2525");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(FormatAddress(*v4), "127.0.0.1:2525");
  auto v6 = ParseListenAddress("[::1]:25");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(FormatAddress(*v6), "[::1]:25");
  auto un = ParseListenAddress("unix:/tmp/x.sock");
  ASSERT_TRUE(un.ok()) << un.status();
  EXPECT_EQ(FormatAddress(*un), "/tmp/x.sock");

  PeerInfo peer = MakePeerInfo(*v4);
  EXPECT_EQ(peer.text, "[127.0.0.1]:2525");
  EXPECT_EQ(peer.ip_text, "127.0.0.1");
  EXPECT_EQ(peer.address_length, 4u);
  EXPECT_EQ(peer.port, 2525);
  PeerInfo peer6 = MakePeerInfo(*v6);
  EXPECT_EQ(peer6.text, "[::1]:25");
  EXPECT_EQ(peer6.address_length, 16u);
  EXPECT_TRUE(MakePeerInfo(*un).is_unix);
}

TEST(SocketAddressTest, RejectsBadSpecs) {
  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:99999", "::1:25", "[::1:25", "unix:rel",
                          "localhost:25", "1.2.3.4:x"}) {
    EXPECT_FALSE(ParseListenAddress(bad).ok()) << bad;
  }
}

TEST(SocketAddressTest, MakesAddressesFromIpLiterals) {
  auto v4 = MakeSocketAddress("192.0.2.7", 25);
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->family(), AF_INET);
  EXPECT_EQ(v4->length, sizeof(sockaddr_in));
  EXPECT_EQ(FormatAddress(*v4), "192.0.2.7:25");
  auto v6 = MakeSocketAddress("2001:db8::1", 587);
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->family(), AF_INET6);
  EXPECT_EQ(v6->length, sizeof(sockaddr_in6));
  EXPECT_EQ(FormatAddress(*v6), "[2001:db8::1]:587");
  auto bracketed = MakeSocketAddress("[::1]", 0);
  ASSERT_TRUE(bracketed.ok()) << bracketed.status();
  EXPECT_EQ(FormatAddress(*bracketed), "[::1]:0");
  for (const char* bad : {"", "mx.example.com", "192.0.2.256", "192.0.2.1:25", "[::1", "::1]",
                          "2001:db8::g"}) {
    auto status = MakeSocketAddress(bad, 25).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(MakeSocketAddress("mx.example.com", 25).status().message().find("mx.example.com"),
            absl::string_view::npos);
}

}  // namespace
}  // namespace facteur::io
