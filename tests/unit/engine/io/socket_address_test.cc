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

}  // namespace
}  // namespace facteur::io
