// Tests for src/KFlow.Postgres/UpsertAttempts.fs: the Copy method (an array field) keeps the last record
// per key, and a replay changes nothing.
module KFlow.Postgres.Tests.UpsertAttemptsTests

open Expecto
open KFlow.Postgres
open KFlow.Postgres.Tests.TestDatabase

let private copyMethod =
    testList "Copy method" [
        test "with an array field (Copy method) the last record per key wins and a replay changes nothing" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int PRIMARY KEY, tags text[])"
            let writer = writerFor (configFor table [ "k"; "tags" ] [ "k" ])
            Expect.equal writer.Method UpsertMethod.Copy "Copy"

            let batch = [
                [| box 1; box [| "a" |] |]
                [| box 2; box [| "b" |] |]
                [| box 1; box [| "c"; "d" |] |]
            ]

            writeNow writer batch
            writeNow writer batch
            let rows = query $"SELECT k, tags FROM {table} ORDER BY k"

            Expect.equal
                rows
                [ [| box 1; box [| "c"; "d" |] |]; [| box 2; box [| "b" |] |] ]
                "last per key, once"
        }
    ]

let tests = testSequenced <| testList "UpsertAttempts" [ copyMethod ]
