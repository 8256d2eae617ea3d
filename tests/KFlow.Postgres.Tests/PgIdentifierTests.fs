// Tests for src/KFlow.Postgres/PgIdentifier.fs: table names parse into schema and name, and every
// name is quoted so that nothing in it can escape into SQL.
module KFlow.Postgres.Tests.PgIdentifierTests

open System
open Expecto
open KFlow.Postgres

let tests =
    testList "PgIdentifier" [
        test "a plain name has no schema and is quoted" {
            let table = PgIdentifier.parse "my_table"
            Expect.equal table.Schema None "no schema"
            Expect.equal table.Sql "\"my_table\"" "quoted"
        }

        test "schema.table splits at the dot and keeps case" {
            let table = PgIdentifier.parse "Sales.Orders"
            Expect.equal table.Schema (Some "Sales") "schema"
            Expect.equal table.Name "Orders" "name, case kept"
            Expect.equal table.Sql "\"Sales\".\"Orders\"" "both parts quoted"
            Expect.equal (string table) "Sales.Orders" "readable form"
        }

        test "quoted parts may hold dots and doubled quotes" {
            let table = PgIdentifier.parse "\"my.schema\".\"a \"\"b\"\"\""
            Expect.equal table.Schema (Some "my.schema") "schema with a dot"
            Expect.equal table.Name "a \"b\"" "name with quotes"
            Expect.equal table.Sql "\"my.schema\".\"a \"\"b\"\"\"" "quotes doubled again"
        }

        test "a quote in a name cannot end the identifier" {
            Expect.equal (PgIdentifier.quote "x\"; DROP TABLE t; --") "\"x\"\"; DROP TABLE t; --\"" "doubled"
        }

        test "bad names are refused with the accepted forms" {
            for bad in [ ""; "a.b.c"; "a..b"; ".a"; "\"open"; "a\"b\"" ] do
                let e = Expect.throwsC (fun () -> PgIdentifier.parse bad |> ignore) id
                Expect.isTrue (e :? ArgumentException) $"'{bad}' raises ArgumentException"
                Expect.stringContains e.Message "table" $"'{bad}': the message says what to write"
        }
    ]
