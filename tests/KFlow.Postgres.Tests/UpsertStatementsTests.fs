// Tests for src/KFlow.Postgres/UpsertStatements.fs: the statements keep the last record per key (DISTINCT ON,
// under the key column's own collation) and insert only the missing keys of a batch of keys only.
module KFlow.Postgres.Tests.UpsertStatementsTests

open Expecto
open FsCheck
open KFlow.Postgres.Tests.TestDatabase

let private lastWinsProperty =
    let table = lazy (keyValueTable ())

    let config = {
        FsCheckConfig.defaultConfig with
            maxTest = 25
    }

    testPropertyWithConfig
        config
        "batches leave the table holding the last record per key, whatever the duplicates"
    <| fun (batches: (byte * int) list list) ->
        let table = table.Value
        execute $"TRUNCATE {table}"
        let writer = keyValueWriter table

        for batch in batches do
            writeNow writer (batch |> List.map (fun (k, n) -> row (int k % 10) $"v{n}" (int64 n)))

        let expected =
            batches
            |> List.concat
            |> List.fold (fun model (k, n) -> Map.add (int k % 10) ($"v{n}", int64 n) model) Map.empty

        let actual = contents table |> List.map (fun (k, v, n) -> k, (v, n)) |> Map.ofList
        actual = expected

let private lastWins =
    testList "last record per key" [
        test "records with the same key in one batch: the last one wins" {
            let table = keyValueTable ()
            let writer = keyValueWriter table
            writeNow writer [ row 1 "first" 1L; row 2 "only" 2L; row 1 "second" 3L; row 1 "last" 4L ]
            Expect.equal (contents table) [ 1, "last", 4L; 2, "only", 2L ] "last per key"
        }

        lastWinsProperty

        test "keys the server finds equal but .NET does not (a case-insensitive collation): the last one wins" {
            let table = freshTable ()
            let collation = $"{table}_ci"
            // ICU collation, case-insensitive (nondeterministic): 'a' and 'A' are one key to the server.
            execute
                $"CREATE COLLATION {collation} (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"

            execute $"CREATE TABLE {table} (k text COLLATE {collation} PRIMARY KEY, v int)"
            let writer = writerFor (configFor table [ "k"; "v" ] [ "k" ])
            // Distinct by .NET's Equals, one key under the column's collation: the writer keeps the last
            // record per key as the unique constraint compares them (PostgreSQL refuses to update a row
            // twice in one statement, 21000, without that).
            writeNow writer [ [| box "a"; box 1 |]; [| box "A"; box 2 |] ]
            Expect.equal (query $"SELECT v FROM {table}") [ [| box 2 |] ] "one row, the last record's"
            writeNow writer [ [| box "b"; box 3 |]; [| box "B"; box 4 |]; [| box "a"; box 5 |] ]

            Expect.equal
                (query $"SELECT v FROM {table} ORDER BY v")
                [ [| box 4 |]; [| box 5 |] ]
                "upserted too: the last per key"
        }

        test "a batch of keys only inserts the missing ones" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int PRIMARY KEY)"
            let writer = writerFor (configFor table [ "k" ] [ "k" ])
            writeNow writer [ [| box 1 |]; [| box 2 |]; [| box 1 |] ]
            writeNow writer [ [| box 2 |]; [| box 3 |] ]
            Expect.equal (count table) 3L "keys 1, 2, 3"
        }
    ]

let tests = testSequenced <| testList "UpsertStatements" [ lastWins ]
