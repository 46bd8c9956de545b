#!/usr/bin/python3
"""Writes the DKIM differential-test corpus (run from this folder; the .eml files are committed).
Each message is raw bytes with CRLF line ends, as the SMTP server queues them."""

def write(name, text, encoding="utf-8"):
    data = text.encode(encoding) if isinstance(text, str) else text
    with open(name, "wb") as f:
        f.write(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

HDR = ("Received: from client.example ([192.0.2.7])\n\tby relay.test.example (facteur) with ESMTP id 01J;\n"
       "\tMon, 23 Nov 2026 15:53:00 +0000\n")

write("simple.eml", HDR + "From: Alice <alice@example.com>\nTo: bob@example.net\nSubject: Hello\n"
      "Date: Mon, 23 Nov 2026 15:53:00 +0000\nMessage-ID: <1@example.com>\n\nHello Bob,\nthis is a test.\n")
write("utf8_body.eml", "From: Élodie <elodie@example.org>\nTo: bob@example.net\n"
      "Subject: =?UTF-8?Q?R=C3=A9union?=\nMIME-Version: 1.0\n"
      "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
      "Bonjour à tous, la réunion est déplacée à jeudi.\nПривет мир — 你好世界 — 🌍\n")
write("utf8_headers.eml", "From: Jérôme <jérôme@exemple.fr>\nTo: Zoë <zoë@example.net>\nSubject: Ça marche ✓\n\nUTF-8 headers (SMTPUTF8).\n")
write("latin1_8bit.eml", "From: fran@example.com\nTo: bob@example.net\nSubject: latin-1\n"
      "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
      "Voil\xe0 un texte en ISO-8859-1: \xe9t\xe9, ma\xefs, \xe7a.\n", "latin-1")
write("folded_headers.eml", "From: \"A very long display name that goes on\"\n <alice@example.com>\n"
      "To: one@example.net, two@example.net,\n\tthree@example.net,   four@example.net\n"
      "Subject: a subject\n  folded over\n\tthree lines   with   spaces\t\there\n"
      "Date: Mon, 23 Nov 2026 15:53:00 +0000\nX-Mixed:\t \ttabs and spaces  \n\nBody.\n")
refs = " ".join("<%d.%s@lists.example.com>" % (i, "x" * 20) for i in range(25))
write("very_long_header.eml", "From: alice@example.com\nTo: bob@example.net\nSubject: " + "long " * 60 + "\n"
      "References: " + refs.replace("> <", ">\n <") + "\n"
      "In-Reply-To: <24.xxxxxxxxxxxxxxxxxxxx@lists.example.com>\n"
      "List-Unsubscribe: <https://lists.example.com/unsubscribe/" + "a" * 300 + ">,\n <mailto:unsub@lists.example.com>\n\nreply\n")
write("empty_body.eml", "From: alice@example.com\nTo: bob@example.net\nSubject: empty\n\n")
write("headers_only.eml", "From: alice@example.com\nTo: bob@example.net\nSubject: no separator\n")
write("no_trailing_crlf.eml", (("From: alice@example.com\nTo: bob@example.net\nSubject: no final CRLF\n\nfirst line\nlast line without end").replace("\n", "\r\n")).encode())
write("trailing_blank_lines.eml", "From: alice@example.com\nTo: bob@example.net\nSubject: blanks\n\ntext  \t\n\n  \n\t\n\n\n")
write("repeated_headers.eml", HDR + HDR + "From: alice@example.com\nTo: bob@example.net\nTo: carol@example.net\n"
      "Cc: dave@example.net\nSubject: first\nCc: erin@example.net\nSubject: second subject\n"
      "Comments: one\nComments: two\nReply-To: list@example.com\n\nrepeated\n")
write("whitespace.eml", "From: alice@example.com\nTo: bob@example.net\nSubject: ws\n\n"
      "  leading spaces\nmiddle   runs\tof\t\t white  \n\t\n\nline after blank\n   \nend\t \n")
write("mime_multipart.eml", "From: alice@example.com\nTo: bob@example.net\nSubject: attachment\n"
      "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n"
      "This is a multi-part message.\n--b1\nContent-Type: text/plain; charset=us-ascii\n\nsee attached\n"
      "--b1\nContent-Type: application/octet-stream; name=\"x.bin\"\nContent-Transfer-Encoding: base64\n\n"
      + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\n" * 20
      + "--b1--\n")
write("list_headers.eml", "From: News <news@example.com>\nTo: bob@example.net\nCc: carol@example.net\n"
      "Reply-To: support@example.com\nSubject: Newsletter\nDate: Mon, 23 Nov 2026 15:53:00 +0000\n"
      "Message-ID: <n1@example.com>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n"
      "List-Id: News <news.example.com>\n"
      "List-Unsubscribe: <https://example.com/u/1>, <mailto:u@example.com>\n"
      "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n\nnews\n")
write("odd_case_names.eml", "FROM: alice@example.com\nto: bob@example.net\nSUBJECT: case\nmime-version: 1.0\n\nbody\n")
write("existing_signature.eml", "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=upstream.example;\n"
      "\ts=s1; t=1; h=from; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\n"
      "From: alice@example.com\nTo: bob@example.net\nSubject: re-signed\n\nbody\n")
lines = []
for i in range(1400):
    lines.append("Line %05d: the quick brown fox jumps over the lazy dog   \t" % i)
write("large_body.eml", "From: alice@example.com\nTo: bob@example.net\nSubject: 100 KB\n\n" + "\n".join(lines) + "\n")
