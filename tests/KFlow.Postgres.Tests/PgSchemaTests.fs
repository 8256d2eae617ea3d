// Tests for src/KFlow.Postgres/PgSchema.fs: a writer is only made for a table it can upsert into, and
// each problem is reported at start-up with the table, the column and what to do.
module KFlow.Postgres.Tests.PgSchemaTests

open System
open Expecto
open KFlow.Postgres
open KFlow.Postgres.Tests.TestDatabase

/// The exception UpsertWriter.create faults with for this configuration.
let private createFault (config: UpsertConfig<obj[]>) =
    faultOf "create" (fun () -> UpsertWriter.create config)

let private expectMessage (e: exn) (parts: string list) =
    for part in parts do
        Expect.stringContains e.Message part $"the message names '{part}'"

let tests =
    testSequenced
    <| testList "PgSchema" [
        test "a missing table is reported with its name" {
            let e = createFault (configFor "no_such_table" [ "k" ] [ "k" ])
            Expect.isTrue (e :? InvalidOperationException) "InvalidOperationException"
            expectMessage e [ "no_such_table"; "does not exist"; "UpsertConfig.Table" ]
        }

        test "a table in a missing schema is reported with the schema" {
            let e = createFault (configFor "no_such_schema.t" [ "k" ] [ "k" ])
            expectMessage e [ "no_such_schema.t"; "does not exist"; "schema no_such_schema" ]
        }

        test "a missing column is reported with the table's columns" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int PRIMARY KEY, present text)"
            let e = createFault (configFor table [ "k"; "absent" ] [ "k" ])
            expectMessage e [ table; "\"absent\""; "\"present\""; "ADD COLUMN" ]
        }

        test "names are exact: a quoted mixed-case table and column are found" {
            let table = "Mixed_" + freshTable ()
            execute $"CREATE TABLE \"{table}\" (\"Key\" int PRIMARY KEY, \"Value\" text)"
            let writer = writerFor (configFor $"public.{table}" [ "Key"; "Value" ] [ "Key" ])
            writeNow writer [ [| box 1; box "x" |] ]
            Expect.equal (scalar<string> $"SELECT \"Value\" FROM \"{table}\"") "x" "written"
            let e = createFault (configFor (table.ToLowerInvariant()) [ "Key" ] [ "Key" ])
            expectMessage e [ "does not exist"; "case-sensitive" ]
        }

        test "a column of an unsupported type is reported with the supported ones" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int PRIMARY KEY, m money)"
            let e = createFault (configFor table [ "k"; "m" ] [ "k" ])
            expectMessage e [ "\"m\""; "money"; "Supported types" ]
        }

        test "keys without a primary key or unique constraint are reported with the fix" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int, v text)"
            let e = createFault (configFor table [ "k"; "v" ] [ "k" ])

            expectMessage e [
                table
                "no primary key or unique constraint"
                "ADD PRIMARY KEY (\"k\")"
                "it has none"
            ]
        }

        test "a unique key on other columns, or a partial one, does not count" {
            let table = freshTable ()

            execute
                $"CREATE TABLE {table} (k int, v int UNIQUE, w int); CREATE UNIQUE INDEX ON {table} (k) WHERE w > 0"

            let e = createFault (configFor table [ "k"; "v" ] [ "k" ])
            expectMessage e [ "no primary key or unique constraint on exactly (\"k\")"; "it has (\"v\")" ]
        }

        test "a unique constraint on exactly the keys, in any order, is accepted" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (a int, b int, v text, UNIQUE (b, a))"
            let writer = writerFor (configFor table [ "a"; "b"; "v" ] [ "a"; "b" ])
            writeNow writer [ [| box 1; box 2; box "x" |]; [| box 1; box 2; box "y" |] ]
            Expect.equal (scalar<string> $"SELECT v FROM {table}") "y" "upserted on (a, b)"
        }

        test "a NOT NULL column without a default missing from the fields is reported" {
            let table = freshTable ()

            execute
                $"CREATE TABLE {table} (k int PRIMARY KEY, required text NOT NULL, defaulted int NOT NULL DEFAULT 0)"

            let e = createFault (configFor table [ "k" ] [ "k" ])
            expectMessage e [ "\"required\""; "NOT NULL"; "Add them to Fields" ]
            Expect.isFalse (e.Message.Contains "\"defaulted\"") "a column with a default is fine"
        }

        test "a generated column cannot be a field" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int PRIMARY KEY, g int GENERATED ALWAYS AS (k * 2) STORED)"
            let e = createFault (configFor table [ "k"; "g" ] [ "k" ])
            expectMessage e [ "\"g\""; "generated" ]
        }

        test "a view is not a table" {
            let table = freshTable ()

            execute
                $"CREATE TABLE {table} (k int PRIMARY KEY); CREATE VIEW {table}_v AS SELECT * FROM {table}"

            let e = createFault (configFor $"{table}_v" [ "k" ] [ "k" ])
            expectMessage e [ "a view, not a table" ]
        }

        test "configuration mistakes are refused before connecting" {
            let check (config: UpsertConfig<obj[]>) (part: string) =
                let e = createFault config
                Expect.isTrue (e :? ArgumentException) $"ArgumentException for {part}"
                Expect.stringContains e.Message part "names the setting"

            check (configFor "t" [] [ "k" ]) "Fields is empty"
            check (configFor "t" [ "k"; "k" ] [ "k" ]) "more than once"
            check (configFor "t" [ "k" ] []) "Keys is empty"
            check (configFor "t" [ "v" ] [ "k" ]) "not in UpsertConfig.Fields"

            check
                (configFor "t" [ "k" ] [ "k" ]
                 |> UpsertConfig.withRetry {
                     PgRetry.defaults with
                         MaxAttempts = 0
                 })
                "MaxAttempts"
        }
    ]
