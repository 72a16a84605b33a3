wrk.method = "POST"
wrk.body = '{"user_id": 4217, "action": "update", "items": [1, 2, 3], "note": "a small JSON body"}'
wrk.headers["Content-Type"] = "application/json"
