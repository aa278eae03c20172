#!/usr/bin/env python3
"""Print rule-file `tests:` entries for every catalog case of one integration.

Usage: tools/catalog-tests.py INTEGRATION [CATALOG]   (default catalog: ../shared/providers/catalog.json)
Catalog actions map to grantd actions: refresh_and_retry -> refresh, retry_later -> retry,
pass_through with an unchanged status -> `unchanged: true`, pass_through otherwise -> none.
"""
import json, sys

ACTIONS = {"refresh_and_retry": "refresh", "retry_later": "retry", "reauth": "reauth",
           "fix_config": "fix_config", "pass_through": "none"}

def main():
    integration = sys.argv[1]
    path = sys.argv[2] if len(sys.argv) > 2 else "../shared/providers/catalog.json"
    for case in json.load(open(path)):
        if case["integration"] != integration:
            continue
        meaning = case["meaning"].split(". ")[0].replace('"', "'")[:90]
        response = {"status": case["http_status"]}
        if case["headers"]:
            response["headers"] = case["headers"]
        if case["body"] is not None:
            response["body"] = case["body"]
        if case["action"] == "pass_through" and case["normalized_status"] == case["http_status"]:
            expect = {"unchanged": True}
        else:
            expect = {"status": case["normalized_status"], "action": ACTIONS[case["action"]]}
        print(f'  - name: "{case["id"]}: {meaning}"')
        print(f'    source: {case["id"]}')
        if case["endpoint_kind"] == "token":
            print("    on: token")
        print(f"    response: {json.dumps(response, ensure_ascii=False)}")
        print(f"    expect: {json.dumps(expect)}")

main()
