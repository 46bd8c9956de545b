// Tests of throttle/classifier.h: the shipped rules (deploy/classifier.toml, as compiled in)
// against the reply texts quoted in ../shared/research/providers.md, the precedence of rules,
// sites and fallbacks, and the retry delay read from the text.
#include "throttle/classifier.h"

#include <string>
#include <string_view>
#include <vector>

#include "engine/config/classifier_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::throttle {
namespace {

using ::testing::HasSubstr;

const ResponseClassifier& Shipped() {
  static const ResponseClassifier* const classifier = [] {
    absl::StatusOr<ResponseClassifier> created =
        ResponseClassifier::Create(config::DefaultClassifierRules());
    if (!created.ok()) {
      ADD_FAILURE() << created.status();
      std::abort();
    }
    return new ResponseClassifier(*std::move(created));
  }();
  return *classifier;
}

ResponseClassifier MustCreate(std::vector<ClassifierRule> rules) {
  absl::StatusOr<ResponseClassifier> created = ResponseClassifier::Create(std::move(rules));
  EXPECT_TRUE(created.ok()) << created.status();
  if (!created.ok()) std::abort();
  return *std::move(created);
}

ClassifierRule Rule(std::string name, std::vector<std::string> codes,
                    std::vector<std::string> enhanced, std::string text, ResponseClass klass,
                    std::vector<std::string> sites = {}) {
  ClassifierRule rule;
  rule.name = std::move(name);
  rule.codes = std::move(codes);
  rule.enhanced_codes = std::move(enhanced);
  rule.text = std::move(text);
  rule.sites = std::move(sites);
  rule.response_class = klass;
  return rule;
}

struct Case {
  std::string_view site;
  int code;
  std::string_view enhanced;
  std::string_view text;
  ResponseClass expected;
};

using C = ResponseClass;

// Real replies (texts as providers.md quotes them, completed from the providers' pages it cites).
const Case kCases[] = {
    // ---- Google [3] ----
    {"google", 421, "4.7.28",
     "Our system has detected an unusual rate of unsolicited mail originating from your IP "
     "address. To protect our users from spam, mail sent from your IP address has been "
     "temporarily rate limited.",
     C::kRateLimit},
    {"google", 421, "4.7.28",
     "Gmail has detected an unusual rate of unsolicited mail originating from your SPF domain "
     "[example.com]. To protect our users from spam, mail sent from your domain has been "
     "temporarily rate limited.",
     C::kRateLimit},
    // The same-Message-ID quota limits those messages, not the IP.
    {"google", 421, "4.7.28",
     "Our system has detected an unusual rate of unsolicited mail containing the same "
     "Message-ID\nheader. gsmtp",
     C::kOtherTransient},
    {"google", 550, "5.7.28",
     "Our system has detected an unusual rate of unsolicited mail originating from your IP "
     "address. To protect our users from spam, mail sent from your IP address has been blocked.",
     C::kBlocklist},
    {"google", 450, "4.2.1",
     "The user you are trying to contact is receiving mail too quickly. Please resend your "
     "message at a later time.",
     C::kOtherTransient},
    {"google", 550, "5.2.1",
     "The user you are trying to contact is receiving mail at a rate that prevents additional "
     "messages from being delivered.",
     C::kOtherTransient},
    {"google", 550, "5.2.1",
     "The email account that you tried to reach is disabled. Learn more at "
     "https://support.google.com/mail/?p=DisabledUser",
     C::kUserUnknown},
    {"google", 550, "5.1.1",
     "The email account that you tried to reach does not exist. Please try double-checking the "
     "recipient's email address for typos or unnecessary spaces.",
     C::kUserUnknown},
    {"google", 452, "4.2.2",
     "The recipient's inbox is out of storage space. Please direct the recipient to "
     "https://support.google.com/mail/?p=OverQuotaTemp",
     C::kMailboxFull},
    {"google", 552, "5.2.2",
     "The recipient's inbox is out of storage space and inactive. Please direct the recipient "
     "to https://support.google.com/mail/?p=OverQuotaPerm",
     C::kUserUnknown},
    {"google", 452, "4.5.3",
     "Your message has too many recipients. For more information regarding Google's sending "
     "limits, visit https://support.google.com/mail/?p=TooManyRecipients",
     C::kOtherTransient},
    {"google", 451, "4.3.0",
     "Multiple destination domains per transaction is unsupported. Please try again.",
     C::kOtherTransient},
    {"google", 421, "4.4.5", "Server busy, try again later.", C::kOtherTransient},
    {"google", 451, "4.4.2", "Timeout - closing connection.", C::kOtherTransient},
    {"google", 421, "4.7.0",
     "The IP address sending this message does not have a PTR record setup, or the "
     "corresponding forward DNS entry does not point to the sending IP.",
     C::kAuthentication},
    {"google", 550, "5.7.26",
     "This mail has been blocked because the sender is unauthenticated. Gmail requires all "
     "senders to authenticate with either SPF or DKIM.",
     C::kAuthentication},
    {"google", 550, "5.7.26",
     "Unauthenticated email from example.com is not accepted due to domain's DMARC policy.",
     C::kAuthentication},
    {"google", 421, "5.7.32",
     "Your email has been rate limited because the From: header (RFC5322) in this message isn't "
     "aligned with either the authenticated SPF or DKIM organizational domain.",
     C::kAuthentication},
    {"google", 421, "4.7.0",
     "Our system has detected that this message is suspicious due to the very low reputation of "
     "the sending IP address. To protect our users from spam, mail sent from your IP address "
     "has been temporarily rate limited.",
     C::kRateLimit},
    {"google", 550, "5.7.1",
     "Our system has detected that this message is likely suspicious due to the very low "
     "reputation of the sending domain. To best protect our users from spam, the message has "
     "been blocked.",
     C::kBlocklist},
    {"google", 550, "5.7.1",
     "Our system has detected that this message is likely unsolicited mail. To reduce the "
     "amount of spam sent to Gmail, this message has been blocked.",
     C::kContent},
    {"google", 421, "4.7.0",
     "This message is suspicious due to the nature of the content or the links within. To best "
     "protect our users from spam, the message has been blocked.",
     C::kContent},
    {"google", 550, "5.7.1",
     "This message is not RFC 5322 compliant. To reduce the amount of spam sent to Gmail, this "
     "message has been blocked.",
     C::kOtherPermanent},

    // ---- Yahoo / AOL [7][23][25b] ----
    {"yahoo", 421, "4.7.0",
     "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
     "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
     C::kRateLimit},
    {"yahoo", 421, "4.7.0",
     "[TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints - 4.16.55.1",
     C::kRateLimit},
    {"yahoo", 421, "", "[IPTS04] Messages from 192.0.2.1 temporarily deferred", C::kRateLimit},
    {"yahoo", 451, "",
     "Message temporarily not accepted - unresolvable MAIL FROM domain (SOA lookup failed)",
     C::kAuthentication},
    {"yahoo", 554, "", "Message not accepted - unresolvable From: domain", C::kAuthentication},
    {"yahoo", 553, "5.7.2",
     "[TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT "
     "succeed. See https://postmaster.yahooinc.com/error-codes",
     C::kBlocklist},
    {"yahoo", 553, "5.7.1",
     "[BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's "
     "list; see https://postmaster.yahooinc.com/error-codes",
     C::kBlocklist},
    {"yahoo", 554, "",
     "Message not allowed - [PH01] Email not accepted for policy reasons. Please visit "
     "https://postmaster.yahooinc.com/error-codes",
     C::kContent},
    {"yahoo", 554, "",
     "delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - "
     "mta1234.mail.ne1.yahoo.com",
     C::kUserUnknown},
    {"yahoo", 554, "",
     "delivery error: dd Sorry your message to someone@aol.com cannot be delivered. This "
     "mailbox is disabled (554.30).",
     C::kUserUnknown},
    {"yahoo", 552, "", "1 Requested mail action aborted, mailbox not found", C::kUserUnknown},

    // ---- Microsoft [9][11][30] ----
    {"microsoft", 421, "",
     "RP-001 (BAY004-MC1F17) Unfortunately, some messages from 192.0.2.1 weren't sent. Please "
     "try again. We have limits for how many messages can be sent per hour and per day.",
     C::kRateLimit},
    {"microsoft", 421, "",
     "RP-003 (COL004-MC4F12) Unfortunately, some messages from 192.0.2.1 weren't sent. Please "
     "try again. We have limits for how many connections can be made.",
     C::kTooManyConnections},
    {"microsoft", 451, "4.7.650",
     "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. For "
     "e-mail delivery information, see https://postmaster.live.com (S775)",
     C::kRateLimit},
    {"microsoft", 451, "4.7.651",
     "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. "
     "(S3114)",
     C::kRateLimit},
    {"microsoft", 550, "5.7.1",
     "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet "
     "service provider since part of their network is on our block list (S3150). You can also "
     "refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
     C::kBlocklist},
    {"microsoft", 550, "",
     "SC-001 (SNT004-MC1F28) Unfortunately, messages from 192.0.2.1 weren't sent. Please "
     "contact your Internet service provider.",
     C::kBlocklist},
    {"microsoft", 550, "",
     "OU-001 (SNT004-MC1F28) Unfortunately, messages from 192.0.2.1 weren't sent.",
     C::kBlocklist},
    {"microsoft", 550, "5.7.515",
     "Access denied, sending domain example.com does not meet the required authentication "
     "level. The sender's domain in the 5322.From address doesn't meet the authentication "
     "requirements defined for the sender.",
     C::kAuthentication},
    {"microsoft", 451, "4.7.500",
     "Server busy. Please try again later from [192.0.2.1]. (AS761) [DM3NAM03FT045.eop-NAM03."
     "prod.protection.outlook.com]",
     C::kRateLimit},
    {"microsoft", 421, "4.3.2",
     "The maximum number of concurrent connections has exceeded a limit, closing transmission "
     "channel",
     C::kTooManyConnections},
    {"microsoft", 550, "5.4.1",
     "Recipient address rejected: Access denied. AS(201806281) [AM0PR02MB1234.eurprd02.prod."
     "outlook.com]",
     C::kUserUnknown},
    {"microsoft", 550, "5.5.0", "Requested action not taken: mailbox unavailable.",
     C::kUserUnknown},

    // ---- Apple iCloud [12][22][23] ----
    {"apple", 421, "", "[HCM1] Your mail from 192.0.2.1 was deferred", C::kRateLimit},
    {"apple", 451, "", "[BS02] Temporary server error. Please try again later",
     C::kRateLimit},
    {"apple", 421, "4.7.0", "Service unavailable - try again later", C::kRateLimit},
    {"apple", 554, "5.7.1",
     "Your message was rejected due to example.com's domain present in the Spamhaus DBL",
     C::kBlocklist},
    {"apple", 550, "5.7.1", "message content rejected due to spam", C::kContent},

    // ---- Orange [25] ----
    {"orange", 421, "",
     "mwinf5c79 ME Trop de connexions, veuillez verifier votre configuration. Too many "
     "connections, slow down. OFR005_104 [104]",
     C::kTooManyConnections},
    {"orange", 421, "",
     "mwinf5c34 ME Service refuse. Veuillez essayer plus tard. Service refused, please try "
     "later. OFR004_201 [201]",
     C::kRateLimit},
    {"orange", 421, "",
     "mwinf5c10 ME Service refuse. Veuillez essayer plus tard. Service refused, please try "
     "later. OFR_999 [999]",
     C::kRateLimit},
    {"orange", 550, "",
     "mwinf5d20 ME Adresse IP source bloquee pour incident de spam. Client host blocked for "
     "spamming issues. OFR006_102 Ref http://csi.cloudmark.com/reset-request [102]",
     C::kBlocklist},
    {"orange", 550, "5.1.1",
     "<someone@orange.fr>: Adresse d au moins un destinataire invalide. Invalid recipient. "
     "OFR_416 [416]",
     C::kUserUnknown},
    {"orange", 552, "5.1.1",
     "<someone@orange.fr>: Boite du destinataire pleine. Recipient overquota. OFR_417 [417]",
     C::kMailboxFull},
    {"orange", 550, "5.5.0", "mwinf5d05 ME Emetteur invalide. Invalid Sender. OFR_405 [405]",
     C::kAuthentication},
    {"orange", 550, "", "mwinf5d41 ME Mail rejete. Mail rejected. OFR_506 [506]", C::kContent},
    {"orange", 501, "5.0.2", "mwinf5d40 ME DMARC check failed", C::kAuthentication},

    // ---- Free [32][24] ----
    {"free", 550, "", "spam detected", C::kContent},
    {"free", 421, "",
     "Too many spams from your IP (192.0.2.1), please visit http://postmaster.free.fr/",
     C::kBlocklist},
    {"free", 421, "", "too many errors from your IP (192.0.2.1)", C::kBlocklist},
    {"free", 421, "4.7.0", "Server busy, too many connections from your IP",
     C::kTooManyConnections},

    // ---- SFR [33][24] ----
    {"sfr", 450, "4.7.1", "<someone@sfr.fr>: Message rejected. SFR_IN_101", C::kContent},
    {"sfr", 421, "", "Too many messages from 192.0.2.1. SFR_IN_105", C::kRateLimit},
    {"sfr", 421, "4.7.0", "smtp-in.sfr.fr Error: too many errors", C::kRateLimit},
    {"sfr", 554, "5.7.1", "abus detecte GU_EIB_02", C::kBlocklist},

    // ---- La Poste [25][34] ----
    {"laposte", 421, "", "Service refuse. Veuillez essayer plus tard. LPN027_503",
     C::kRateLimit},
    {"laposte", 421, "", "Trop de connexions. LPN105_104", C::kTooManyConnections},
    {"laposte", 550, "5.1.1", "Destinataire invalide. LPN007_416", C::kUserUnknown},
    {"laposte", 550, "", "Boite du destinataire archivee. LPN007_420", C::kUserUnknown},
    {"laposte", 550, "", "Emetteur invalide. Invalid sender. LPN007_405", C::kAuthentication},
    {"laposte", 550, "5.7.1", "DMARC failure. LPN007_517", C::kAuthentication},
    {"laposte", 550, "", "Host rejected. LPN000_630", C::kBlocklist},

    // ---- GMX / WEB.DE [20][21]: no enhanced codes, multiline ----
    {"gmx", 554, "",
     "gmx.net (mxgmx017) Nemesis ESMTP Service not available\nNo SMTP service\nIP address is "
     "block listed.\nFor explanation visit https://postmaster.gmx.net/en/case?c=r0201&i=ip&v=192"
     ".0.2.1",
     C::kBlocklist},
    {"gmx", 554, "",
     "web.de (mxweb112) Nemesis ESMTP Service not available\nReject due to policy restrictions."
     "\nFor explanation visit https://web.de/email/senderguidelines?ip=192.0.2.1&c=hi",
     C::kRateLimit},
    {"gmx", 550, "", "Requested action not taken: mailbox unavailable\nReject due to SPF policy",
     C::kAuthentication},
    {"gmx", 421, "", "gmx.net (mxgmx116) Nemesis ESMTP Service not available\nToo many connections",
     C::kTooManyConnections},
    {"gmx", 552, "", "Requested mail action aborted: exceeded storage allocation",
     C::kMailboxFull},

    // ---- Vade-filtered hosts [36] ----
    {"", 421, "4.2.1", "Too many connections from this IP. OXSUS001_110", C::kTooManyConnections},
    {"", 421, "4.2.1", "Too many messages. OXSUS001_140", C::kRateLimit},

    // ---- Infomaniak [35]: greylists ----
    {"infomaniak", 450, "4.7.1", "<someone@infomaniak.ch>: Recipient address rejected",
     C::kGreylist},

    // ---- Greylisting implementations (providers.md §3) ----
    {"", 450, "4.7.1",
     "<someone@example.org>: Recipient address rejected: Greylisted, see "
     "http://postgrey.schweikert.ch/help/example.org.html",
     C::kGreylist},
    {"", 451, "4.7.1", "Greylisting in action, please come back in 00:30:00", C::kGreylist},
    {"", 451, "4.7.1", "Try again later", C::kGreylist},
    {"", 451, "4.7.1", "Please try again later", C::kGreylist},
    {"", 450, "4.7.1", "Recipient address rejected: please try again in 5 minutes", C::kGreylist},
    {"", 451, "4.3.0", "Please try again later", C::kOtherTransient},  // not greylisting's codes
    // Greylisting's words come last: a listing, a rate or a connection limit says more.
    {"", 450, "4.7.1",
     "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; please try "
     "again later",
     C::kBlocklist},
    {"", 451, "4.7.1", "Sending quota exceeded, please try again later", C::kRateLimit},
    {"", 421, "4.7.1", "Too many concurrent SMTP connections; please try again later.",
     C::kTooManyConnections},
    {"", 422, "4.2.2", "Greylisted, please try again in a few moments.", C::kGreylist},
    {"", 450, "4.2.0", "Greylisted for 300 seconds", C::kGreylist},
    {"", 450, "4.3.2", "Service currently unavailable", C::kGreylist},

    // ---- Too many recipients: RFC 5321 §4.5.3.1.10 reads a 552 as a 452 ----
    {"", 452, "4.5.3", "Too many recipients", C::kOtherTransient},
    {"", 552, "5.5.3", "Too many recipients", C::kOtherTransient},
    {"", 552, "", "Error: too many recipients", C::kOtherTransient},
    {"", 552, "5.7.1", "Too many recipients in the last hour, sending limit exceeded",
     C::kRateLimit},
    // RFC 5321's stock 552 words with a size code: the message is too big, not the mailbox full.
    {"", 552, "5.3.4", "Requested mail action aborted: exceeded storage allocation",
     C::kOtherPermanent},

    // ---- Generic patterns (providers.md §4.4) ----
    {"", 554, "5.7.1",
     "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; "
     "https://www.spamhaus.org/query/ip/192.0.2.1",
     C::kBlocklist},
    {"", 550, "5.7.1", "Message rejected because 192.0.2.1 is listed on the Barracuda RBL",
     C::kBlocklist},
    {"", 450, "4.7.25", "Client host rejected: cannot find your hostname, [192.0.2.1]",
     C::kAuthentication},
    {"", 550, "5.7.1", "Client host rejected: cannot find your reverse hostname, [192.0.2.1]",
     C::kAuthentication},
    {"", 550, "5.1.1",
     "<nobody@example.org>: Recipient address rejected: User unknown in virtual mailbox table",
     C::kUserUnknown},
    {"", 550, "", "No such user here", C::kUserUnknown},
    {"", 550, "5.7.1", "Requested action not taken: mailbox unavailable (policy)",
     C::kOtherPermanent},
    {"", 550, "", "Requested action not taken: mailbox unavailable", C::kUserUnknown},
    {"", 550, "5.1.1", "Utilisateur inconnu", C::kUserUnknown},
    {"", 553, "5.1.8", "<bounce@nowhere.example>: Sender address unknown", C::kAuthentication},
    {"", 552, "", "Mailbox is full", C::kMailboxFull},
    {"", 452, "4.2.2", "User has exceeded their quota, try again later", C::kMailboxFull},
    {"", 550, "", "User account is disabled", C::kUserUnknown},
    {"", 550, "5.1.2", "Host or domain name not found. Name service error", C::kDomainNotFound},
    {"", 556, "5.1.10", "Recipient address has null MX", C::kDomainNotFound},
    {"", 550, "5.7.1", "Message rejected as spam by Content Filtering.", C::kContent},
    {"", 554, "5.7.1", "Your message was rejected: virus found", C::kContent},
    {"", 421, "4.7.0", "Rate limit exceeded, try again slower", C::kRateLimit},
    {"", 451, "4.3.0", "Temporary server error. Please try again later", C::kOtherTransient},
    {"", 554, "5.7.1", "<someone@example.org>: Relay access denied", C::kOtherPermanent},
    {"", 450, "4.1.1", "<someone@example.org>: Recipient address rejected: unverified address",
     C::kOtherTransient},
};

TEST(ShippedRulesTest, RealRepliesGetTheirClass) {
  const ResponseClassifier& classifier = Shipped();
  int count = 0;
  for (const Case& c : kCases) {
    Classification got = classifier.Classify(c.code, c.enhanced, c.text, c.site);
    EXPECT_EQ(ResponseClassName(got.response_class), ResponseClassName(c.expected))
        << c.site << " " << c.code << " " << c.enhanced << " " << c.text
        << "\n  (rule: " << got.rule << ")";
    ++count;
  }
  EXPECT_GE(count, 40);
}

TEST(ShippedRulesTest, EveryClassButSuccessIsReachedByTheCases) {
  bool seen[kResponseClassCount] = {};
  for (const Case& c : kCases) seen[static_cast<size_t>(c.expected)] = true;
  for (size_t i = 1; i < kResponseClassCount; ++i) {
    EXPECT_TRUE(seen[i]) << kResponseClassNames[i];
  }
}

TEST(ShippedRulesTest, ReportsTheRuleThatMatched) {
  const ResponseClassifier& classifier = Shipped();
  EXPECT_EQ(classifier.Classify(421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily "
                                              "deferred", "yahoo").rule,
            "yahoo-deferral");
  EXPECT_EQ(classifier.Classify(421, "", "Too many connections, slow down. OFR005_104",
                                "orange").rule,
            "orange-connections");
  // La Poste's refusal shares Orange's French words: its own rule names it.
  EXPECT_EQ(classifier.Classify(421, "", "Service refuse. Veuillez essayer plus tard. LPN027_503",
                                "laposte").rule,
            "laposte-refused");
  // No rule: the codes decide, and say so.
  Classification fallback = classifier.Classify(550, "5.1.1", "no", "");
  EXPECT_EQ(fallback.response_class, ResponseClass::kUserUnknown);
  EXPECT_EQ(fallback.rule, "default");
}

TEST(ShippedRulesTest, SuccessWhateverTheText) {
  const ResponseClassifier& classifier = Shipped();
  for (int code : {200, 220, 250, 251, 252}) {
    Classification got =
        classifier.Classify(code, "2.0.0", "Greylisted; user unknown; blocked using spamhaus; "
                                           "try again in 300 seconds", "google");
    EXPECT_EQ(got.response_class, ResponseClass::kSuccess) << code;
    EXPECT_EQ(got.rule, "default");
    EXPECT_FALSE(got.retry_after.has_value());
  }
}

TEST(ShippedRulesTest, SiteRulesApplyToTheirSiteOnly) {
  const ResponseClassifier& classifier = Shipped();
  const std::string_view rate = "The user you are trying to contact is receiving mail at a rate "
                                "that prevents additional messages from being delivered.";
  // Gmail's 550 5.2.1 is a per-recipient rate limit...
  EXPECT_EQ(classifier.Classify(550, "5.2.1", rate, "google").response_class,
            ResponseClass::kOtherTransient);
  // ...anywhere else 5.2.1 is a disabled mailbox (RFC 3463).
  EXPECT_EQ(classifier.Classify(550, "5.2.1", rate, "").response_class,
            ResponseClass::kUserUnknown);
  // Google's 421 4.4.5 "Server busy" is a plain transient failure; elsewhere a rate limit.
  EXPECT_EQ(classifier.Classify(421, "4.4.5", "Server busy, try again later.", "google")
                .response_class,
            ResponseClass::kOtherTransient);
  EXPECT_EQ(classifier.Classify(421, "4.4.5", "Server busy, try again later.", "ovh")
                .response_class,
            ResponseClass::kRateLimit);
  // Infomaniak's 450 4.7.1 is greylisting; OVH's is not said to be.
  EXPECT_EQ(classifier.Classify(450, "4.7.1", "Recipient address rejected", "infomaniak")
                .response_class,
            ResponseClass::kGreylist);
  EXPECT_EQ(classifier.Classify(450, "4.7.1", "Recipient address rejected", "ovh")
                .response_class,
            ResponseClass::kOtherTransient);
}

TEST(ShippedRulesTest, UnknownUserTextOnATransientReplyIsNotABounce) {
  const ResponseClassifier& classifier = Shipped();
  EXPECT_EQ(classifier.Classify(450, "4.1.1", "User unknown in local recipient table", "")
                .response_class,
            ResponseClass::kOtherTransient);
  EXPECT_EQ(classifier.Classify(550, "5.1.1", "User unknown in local recipient table", "")
                .response_class,
            ResponseClass::kUserUnknown);
}

TEST(ShippedRulesTest, GreylistRepliesCarryTheirAnnouncedDelay) {
  const ResponseClassifier& classifier = Shipped();
  Classification got = classifier.Classify(450, "4.2.0", "Greylisted for 300 seconds", "");
  EXPECT_EQ(got.response_class, ResponseClass::kGreylist);
  EXPECT_EQ(got.retry_after, absl::Seconds(300));
  got = classifier.Classify(451, "4.7.1", "Greylisting in action, please come back in 00:05:00",
                            "");
  EXPECT_EQ(got.response_class, ResponseClass::kGreylist);
  EXPECT_EQ(got.retry_after, absl::Minutes(5));
  got = classifier.Classify(451, "4.7.1", "Try again later", "");
  EXPECT_EQ(got.response_class, ResponseClass::kGreylist);
  EXPECT_FALSE(got.retry_after.has_value());
}

TEST(ShippedRulesTest, LongAndBinaryTextsAreClassified) {
  const ResponseClassifier& classifier = Shipped();
  std::string text(100000, 'a');
  text.replace(10, 12, "user unknown");
  EXPECT_EQ(classifier.Classify(550, "", text, "").response_class, ResponseClass::kUserUnknown);
  // A code past kMaxClassifiedText is not seen.
  std::string late(kMaxClassifiedText + 10, 'a');
  late += " user unknown";
  EXPECT_EQ(classifier.Classify(550, "", late, "").rule, "default");
  // Latin-1 and invalid UTF-8 octets are matched byte by byte.
  EXPECT_EQ(classifier.Classify(552, "", "Bo\xeete du destinataire pleine", "orange")
                .response_class,
            ResponseClass::kMailboxFull);
  EXPECT_EQ(classifier.Classify(552, "", "Bo\xc3\xaete du destinataire pleine", "orange")
                .response_class,
            ResponseClass::kMailboxFull);
  EXPECT_EQ(classifier.Classify(550, "", std::string_view("\0\xff\xfe spam", 9), "")
                .response_class,
            ResponseClass::kContent);
}

// ---- Precedence and matching, on rules of the test's own ----

TEST(ClassifierTest, FirstMatchingRuleInFileOrderWins) {
  ResponseClassifier classifier = MustCreate({
      Rule("first", {"4xx"}, {}, "slow", ResponseClass::kRateLimit),
      Rule("second", {"4xx"}, {}, "slow down", ResponseClass::kTooManyConnections),
  });
  Classification got = classifier.Classify(421, "", "please slow down", "");
  EXPECT_EQ(got.response_class, ResponseClass::kRateLimit);
  EXPECT_EQ(got.rule, "first");
  // The same rules the other way round.
  ResponseClassifier reversed = MustCreate({
      Rule("second", {"4xx"}, {}, "slow down", ResponseClass::kTooManyConnections),
      Rule("first", {"4xx"}, {}, "slow", ResponseClass::kRateLimit),
  });
  EXPECT_EQ(reversed.Classify(421, "", "please slow down", "").rule, "second");
  EXPECT_EQ(reversed.Classify(421, "", "too slow", "").rule, "first");
}

TEST(ClassifierTest, EveryFieldOfARuleMustMatch) {
  ResponseClassifier classifier = MustCreate({
      Rule("all", {"421"}, {"4.7.0"}, "busy", ResponseClass::kRateLimit, {"orange"}),
  });
  EXPECT_EQ(classifier.Classify(421, "4.7.0", "BUSY", "orange").rule, "all");
  EXPECT_EQ(classifier.Classify(451, "4.7.0", "busy", "orange").rule, "default");
  EXPECT_EQ(classifier.Classify(421, "4.7.1", "busy", "orange").rule, "default");
  EXPECT_EQ(classifier.Classify(421, "", "busy", "orange").rule, "default");
  EXPECT_EQ(classifier.Classify(421, "4.7.0", "idle", "orange").rule, "default");
  EXPECT_EQ(classifier.Classify(421, "4.7.0", "busy", "free").rule, "default");
  EXPECT_EQ(classifier.Classify(421, "4.7.0", "busy", "").rule, "default");
}

TEST(ClassifierTest, CodeAndEnhancedPatterns) {
  ResponseClassifier classifier = MustCreate({
      Rule("x7", {"45x"}, {"x.7.26"}, "", ResponseClass::kAuthentication),
      Rule("detail", {}, {"5.1.*"}, "", ResponseClass::kUserUnknown),
      Rule("list", {"421", "5x4"}, {}, "", ResponseClass::kBlocklist),
  });
  EXPECT_EQ(classifier.Classify(451, "4.7.26", "", "").rule, "x7");
  EXPECT_EQ(classifier.Classify(450, "5.7.26", "", "").rule, "x7");
  EXPECT_EQ(classifier.Classify(421, "4.7.26", "", "").rule, "list");
  EXPECT_EQ(classifier.Classify(550, "5.1.10", "", "").rule, "detail");
  EXPECT_EQ(classifier.Classify(550, "4.1.1", "", "").rule, "default");
  EXPECT_EQ(classifier.Classify(554, "", "", "").rule, "list");
  EXPECT_EQ(classifier.Classify(550, "5.7.1", "", "").rule, "default");
  // Malformed enhanced codes match no enhanced pattern.
  for (std::string_view bad : {"5.1", "5..1", "51.1.1", "5.1.1234", "5.1.a", "3.1.1", " 5.1.1"}) {
    EXPECT_EQ(classifier.Classify(550, bad, "", "").rule, "default") << bad;
  }
}

TEST(ClassifierTest, TextIsSearchedCaseInsensitivelyAndUnanchored) {
  ResponseClassifier classifier = MustCreate({
      Rule("greylist", {}, {}, "grey ?listed", ResponseClass::kGreylist),
  });
  EXPECT_EQ(classifier.Classify(450, "", "You are GREYLISTED here", "").rule, "greylist");
  EXPECT_EQ(classifier.Classify(450, "", "line one\nGrey listed on line two", "").rule,
            "greylist");
  EXPECT_EQ(classifier.Classify(450, "", "grey", "").rule, "default");
}

TEST(ClassifierTest, FallbackOnEnhancedThenBasicCode) {
  ResponseClassifier empty = MustCreate({});
  struct {
    int code;
    std::string_view enhanced;
    ResponseClass expected;
  } const cases[] = {
      {550, "5.1.1", ResponseClass::kUserUnknown},
      {450, "4.1.1", ResponseClass::kOtherTransient},
      {550, "5.1.2", ResponseClass::kDomainNotFound},
      {556, "5.1.10", ResponseClass::kDomainNotFound},
      {550, "5.1.6", ResponseClass::kUserUnknown},
      {550, "5.2.1", ResponseClass::kUserUnknown},
      {450, "4.2.1", ResponseClass::kOtherTransient},
      {452, "4.2.2", ResponseClass::kMailboxFull},
      {552, "5.2.2", ResponseClass::kMailboxFull},
      {550, "5.7.13", ResponseClass::kUserUnknown},
      {550, "5.7.23", ResponseClass::kAuthentication},
      {451, "4.7.24", ResponseClass::kAuthentication},
      {550, "5.7.26", ResponseClass::kAuthentication},
      {550, "5.7.27", ResponseClass::kAuthentication},
      {421, "4.7.28", ResponseClass::kRateLimit},
      {550, "5.7.28", ResponseClass::kBlocklist},
      {421, "5.7.28", ResponseClass::kRateLimit},  // the basic code says transient
      {451, "4.3.0", ResponseClass::kOtherTransient},
      {554, "5.7.1", ResponseClass::kOtherPermanent},
      {421, "", ResponseClass::kOtherTransient},
      {554, "", ResponseClass::kOtherPermanent},
      {550, "garbage", ResponseClass::kOtherPermanent},
      {250, "5.1.1", ResponseClass::kSuccess},
      {354, "", ResponseClass::kOtherTransient},
      {0, "", ResponseClass::kOtherTransient},
      {999, "5.1.1", ResponseClass::kOtherTransient},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(ResponseClassName(empty.Classify(c.code, c.enhanced, "", "").response_class),
              ResponseClassName(c.expected))
        << c.code << " " << c.enhanced;
    EXPECT_EQ(DefaultClass(c.code, c.enhanced), c.expected) << c.code << " " << c.enhanced;
  }
}

TEST(ClassifierTest, ClassifierIsMovable) {
  ResponseClassifier a = MustCreate({Rule("r", {}, {}, "x", ResponseClass::kContent)});
  ResponseClassifier b = std::move(a);
  EXPECT_EQ(b.Classify(550, "", "x", "").rule, "r");
  EXPECT_EQ(b.rule_count(), 1u);
}

TEST(ClassifierTest, CreateRefusesBadRules) {
  auto error = [](std::vector<ClassifierRule> rules) {
    absl::StatusOr<ResponseClassifier> created = ResponseClassifier::Create(std::move(rules));
    EXPECT_FALSE(created.ok());
    return created.ok() ? std::string() : std::string(created.status().message());
  };
  const ResponseClass k = ResponseClass::kContent;
  EXPECT_THAT(error({Rule("", {}, {}, "x", k)}), HasSubstr("needs a name"));
  EXPECT_THAT(error({Rule("a", {}, {}, "x", k), Rule("a", {}, {}, "y", k)}),
              HasSubstr("rule 1 ('a'): duplicate rule name"));
  EXPECT_THAT(error({Rule("default", {}, {}, "x", k)}), HasSubstr("'default'"));
  EXPECT_THAT(error({Rule("any", {}, {}, "", k)}), HasSubstr("needs a code"));
  EXPECT_THAT(error({Rule("c", {"2xx"}, {}, "", k)}), HasSubstr("code: a 2xx reply"));
  EXPECT_THAT(error({Rule("c", {"42"}, {}, "", k)}), HasSubstr("not a 4xx or 5xx reply code"));
  EXPECT_THAT(error({Rule("c", {"4y1"}, {}, "", k)}), HasSubstr("digit or 'x'"));
  EXPECT_THAT(error({Rule("c", {""}, {}, "x", k)}), HasSubstr("code: empty"));
  EXPECT_THAT(error({Rule("e", {}, {"5.1"}, "", k)}), HasSubstr("not an enhanced status code"));
  EXPECT_THAT(error({Rule("e", {}, {"5.1.1000"}, "", k)}),
              HasSubstr("not an enhanced status code"));
  EXPECT_THAT(error({Rule("e", {}, {"2.0.0"}, "", k)}), HasSubstr("a 2xx reply"));
  EXPECT_THAT(error({Rule("t", {}, {}, "(unclosed", k)}),
              HasSubstr("text: not a valid RE2 pattern: missing )"));
  EXPECT_THAT(error({Rule("t", {}, {}, "(?=lookahead)", k)}),
              HasSubstr("not a valid RE2 pattern"));
  EXPECT_THAT(error({Rule("t", {}, {}, "spam|", k)}), HasSubstr("matches the empty text"));
  EXPECT_THAT(error({Rule("s", {}, {}, "x", ResponseClass::kSuccess)}),
              HasSubstr("class: 'success'"));
  EXPECT_THAT(error({Rule("s", {}, {}, "x", k, {""})}), HasSubstr("sites"));
}

// ---- The delay a reply announces ----

TEST(AnnouncedRetryDelayTest, ReadsTheCommonPhrasings) {
  struct {
    std::string_view text;
    std::optional<absl::Duration> expected;
  } const cases[] = {
      {"Greylisted, try again in 300 seconds", absl::Seconds(300)},
      {"Greylisted for 300 seconds", absl::Seconds(300)},
      {"Greylisting in action, please come back in 00:05:00", absl::Minutes(5)},
      {"Greylisting in action, please come back in 01:02:03",
       absl::Hours(1) + absl::Minutes(2) + absl::Seconds(3)},
      {"Please retry in 5 minutes", absl::Minutes(5)},
      {"retry in 5 min.", absl::Minutes(5)},
      {"Try again after 120s", absl::Seconds(120)},
      {"Deferred: please TRY AGAIN IN 2 HOURS", absl::Hours(2)},
      {"greylisted, wait for at least 60 seconds before retrying", absl::Seconds(60)},
      {"You are greylisted\nplease try again in 10 minutes", absl::Minutes(10)},
      {"Try again in 1 day", absl::Hours(24)},
      // None announced.
      {"Try again later", std::nullopt},
      {"Greylisted, please try again in a few moments.", std::nullopt},
      {"Greylisted, see http://postgrey.schweikert.ch/help/example.org.html", std::nullopt},
      {"Too many messages in 1 hour", std::nullopt},  // a limit's window, not a delay
      {"", std::nullopt},
      // Absurd: zero, more than a day, numbers that would overflow.
      {"try again in 0 seconds", std::nullopt},
      {"try again in 2 days", std::nullopt},
      {"try again in 86401 seconds", std::nullopt},
      {"try again in 999999999 days", std::nullopt},
      {"try again in 99999999999999999999 seconds", std::nullopt},
      {"come back in 999:00:00", std::nullopt},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(AnnouncedRetryDelay(c.text), c.expected) << c.text;
  }
}

TEST(AnnouncedRetryDelayTest, ClassifyFillsItForFailuresOnly) {
  ResponseClassifier empty = MustCreate({});
  EXPECT_EQ(empty.Classify(421, "4.7.0", "try again in 10 minutes", "").retry_after,
            absl::Minutes(10));
  EXPECT_EQ(empty.Classify(550, "5.7.1", "blocked, try again in 1 hour", "").retry_after,
            absl::Hours(1));
  EXPECT_FALSE(empty.Classify(250, "2.0.0", "try again in 10 minutes", "").retry_after);
}

}  // namespace
}  // namespace facteur::throttle
