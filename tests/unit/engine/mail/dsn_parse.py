#!/usr/bin/python3
"""Reads a DSN with Python's email package, an independent MIME reader, and prints what it
found as one JSON object, for dsn_test.cc to check: the top-level type and headers, each
part's type, the decoded human text, the message/delivery-status blocks (email parses that
type into a list of header blocks), the returned message or header section, and every defect
the parser recorded anywhere in the tree.

Usage: dsn_parse.py FILE
"""
import email
import email.policy
import json
import sys
from email.parser import HeaderParser


def items(message):
    return [[name, str(value)] for name, value in message.items()]


def main():
    with open(sys.argv[1], 'rb') as f:
        raw = f.read()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    out = {
        'content_type': msg.get_content_type(),
        'report_type': msg.get_param('report-type'),
        'boundary': msg.get_boundary(),
        'headers': items(msg),
        'from_addr': msg['From'].addresses[0].addr_spec,
        'from_name': msg['From'].addresses[0].display_name,
        'to_addr': msg['To'].addresses[0].addr_spec,
        'date': msg['Date'].datetime.isoformat(),
        'defects': [],
    }
    for part in msg.walk():
        out['defects'] += ['%s: %s' % (part.get_content_type(), type(d).__name__)
                           for d in part.defects]

    parts = msg.get_payload()
    out['parts'] = [{
        'type': p.get_content_type(),
        'cte': p.get('Content-Transfer-Encoding'),
        'charset': p.get_content_charset(),
        'description': p.get('Content-Description'),
    } for p in parts]
    out['text'] = parts[0].get_content()

    blocks = parts[1].get_payload()
    out['per_message'] = items(blocks[0])
    out['recipients'] = [items(b) for b in blocks[1:]]
    for block in blocks:
        out['defects'] += ['status block: %s' % type(d).__name__ for d in block.defects]

    returned = parts[2]
    if returned.get_content_maintype() == 'message':
        inner = returned.get_payload(0)
        out['returned_headers'] = items(inner)
        body = inner.get_payload(decode=True)
        out['returned_body'] = body.decode('utf-8', 'replace') if body else ''
    else:
        out['returned_headers'] = items(
            HeaderParser(policy=email.policy.default).parsestr(returned.get_content()))
        out['returned_body'] = None
    json.dump(out, sys.stdout)


if __name__ == '__main__':
    main()
