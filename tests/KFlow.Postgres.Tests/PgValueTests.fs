// Tests for src/KFlow.Postgres/PgValue.fs: values are normalized for their column type, and every
// supported type (nulls, unicode, arrays, JSON input) survives a trip through the sink and back.
module KFlow.Postgres.Tests.PgValueTests

open System
open System.Collections.Generic
open System.Text.Json
open Expecto
open Npgsql
open KFlow.Postgres
open KFlow.Postgres.Tests.TestDatabase

let private scalarType (s: PgScalar) = {
    Name = string s
    Scalar = s
    IsArray = false
}

let private arrayOf (s: PgScalar) = {
    Name = string s + "[]"
    Scalar = s
    IsArray = true
}

let private json (text: string) =
    use document = JsonDocument.Parse text
    document.RootElement.Clone()

/// A column of the round-trip table: its name, SQL type, and how to read it back.
[<NoEquality; NoComparison>]
type private Column = {
    Name: string
    Declaration: string
    Read: NpgsqlDataReader -> int -> obj
}

let private reading<'t> : NpgsqlDataReader -> int -> obj =
    fun reader i ->
        if reader.IsDBNull i then
            null
        else
            box (reader.GetFieldValue<'t> i)

/// A column named `name` of SQL type `declaration`, read back as `read` reads it.
let private column name declaration read = {
    Name = name
    Declaration = declaration
    Read = read
}

let private columns = [
    column "t" "text" reading<string>
    column "vc" "varchar(40)" reading<string>
    column "i2" "smallint" reading<int16>
    column "i4" "integer" reading<int>
    column "i8" "bigint" reading<int64>
    column "num" "numeric" reading<decimal>
    column "f4" "real" reading<float32>
    column "f8" "double precision" reading<float>
    column "b" "boolean" reading<bool>
    column "ts" "timestamp" reading<DateTime>
    column "tstz" "timestamptz" reading<DateTime>
    column "d" "date" reading<DateOnly>
    column "u" "uuid" reading<Guid>
    column "j" "jsonb" reading<string>
    column "js" "json" reading<string>
    column "by" "bytea" reading<byte[]>
    column "ai" "integer[]" reading<Nullable<int>[]>
    column "at" "text[]" reading<string[]>
    column "anum" "numeric[]" reading<decimal[]>
    column "atstz" "timestamptz[]" reading<DateTime[]>
    column "au" "uuid[]" reading<Guid[]>
    column "ajb" "jsonb[]" reading<string[]>
]

/// The scalar columns (no array): a table of these is written with the Unnest method.
let private scalarColumns =
    columns |> List.filter (fun c -> not (c.Declaration.EndsWith "[]"))

/// The id field and the columns' names: the fields of a round-trip table's writer.
let private fieldsOf (columns: Column list) = "id" :: (columns |> List.map _.Name)

let private fields = fieldsOf columns

/// A fresh table with an integer key and the given columns.
let private tableOf (columns: Column list) =
    let table = freshTable ()

    let declarations =
        columns |> List.map (fun c -> $"{c.Name} {c.Declaration}") |> String.concat ", "

    execute $"CREATE TABLE {table} (id integer PRIMARY KEY, {declarations})"
    table

/// A fresh table with an integer key and every supported type.
let private roundTripTable () = tableOf columns

/// The table's rows as maps from column name to value read back (null for NULL), by id.
let private readBackOf (columns: Column list) (table: string) : Map<int, Map<string, obj>> =
    let fields = fieldsOf columns
    use connection = new NpgsqlConnection(connectionString ())
    connection.Open()
    let names = fields |> String.concat ", "

    use command =
        new NpgsqlCommand($"SELECT {names} FROM {table} ORDER BY id", connection)

    use reader = command.ExecuteReader(Data.CommandBehavior.Default)

    [
        while reader.Read() do
            let id = reader.GetInt32 0

            let values =
                columns |> List.mapi (fun i c -> c.Name, c.Read reader (i + 1)) |> Map.ofList

            id, values
    ]
    |> Map.ofList

let private readBack = readBackOf columns

let private utc = DateTime(2024, 2, 29, 13, 45, 12, 345, DateTimeKind.Utc)
let private guid = Guid "6f1c2b0e-4f7a-4d3e-9a51-0c3e2d1b7a90"

/// Every column with a value, as given and as read back.
let private full: (string * obj * obj) list = [
    "t", box "plain text", box "plain text"
    "vc", box "héllo 世界 🚀 ñ", box "héllo 世界 🚀 ñ"
    "i2", box Int16.MinValue, box Int16.MinValue
    "i4", box Int32.MaxValue, box Int32.MaxValue
    "i8", box Int64.MinValue, box Int64.MinValue
    "num", box 12345678901234.567891m, box 12345678901234.567891m
    "f4", box 1.5f, box 1.5f
    "f8", box Math.PI, box Math.PI
    "b", box true, box true
    "ts", box (DateTime(2001, 1, 2, 3, 4, 5, DateTimeKind.Unspecified)), box (DateTime(2001, 1, 2, 3, 4, 5))
    "tstz", box (DateTimeOffset(2024, 2, 29, 15, 45, 12, 345, TimeSpan.FromHours 2.0)), box utc
    "d", box (DateOnly(1999, 12, 31)), box (DateOnly(1999, 12, 31))
    "u", box guid, box guid
    "j", box """{"a": [1, "é"], "b": null}""", box """{"a": [1, "é"], "b": null}"""
    "js", box """{"k":1,  "k2" : "ü"}""", box """{"k":1,  "k2" : "ü"}"""
    "by", box [| 0uy; 255uy; 1uy |], box [| 0uy; 255uy; 1uy |]
    "ai", box [| Nullable 1; Nullable(); Nullable -3 |], box [| Nullable 1; Nullable(); Nullable -3 |]
    "at", box [| "a"; "ü 🚀"; "" |], box [| "a"; "ü 🚀"; "" |]
    "anum", box [| 1.5m; -2m |], box [| 1.5m; -2m |]
    "atstz", box [| utc |], box [| utc |]
    "au", box [| guid |], box [| guid |]
    "ajb", box [| """{"x": 1}""" |], box [| """{"x": 1}""" |]
]

let private expectRow (row: Map<string, obj>) (expected: (string * obj) list) (what: string) =
    for name, value in expected do
        Expect.equal row[name] value $"{what}: column {name}"

/// Expects every one of the columns to be NULL in the row.
let private expectNulls (row: Map<string, obj>) (columns: Column list) (what: string) =
    expectRow row (columns |> List.map (fun c -> c.Name, null)) what

/// The row `id` with the given values of `full` (or a part of it), in their order.
let private valuesRow (id: int) (given: (string * obj * obj) list) : obj[] =
    box id :: (given |> List.map (fun (_, value, _) -> value)) |> Array.ofList

/// The row `id` with every column NULL, as null and as DBNull.Value alternately.
let private nullsRow (id: int) (columns: Column list) : obj[] =
    box id
    :: (columns |> List.mapi (fun i _ -> if i % 2 = 0 then null else box DBNull.Value))
    |> Array.ofList

/// The values of `full` (or a part of it) as read back, by column name.
let private readBackValues (given: (string * obj * obj) list) =
    given |> List.map (fun (name, _, back) -> name, back)

let private normalization =
    testList "normalize" [
        test "null, DBNull, None and ValueNone are NULL; Some x is x" {
            let t = scalarType PgScalar.Int4
            Expect.isNull (PgValue.normalize t null) "null"
            Expect.isNull (PgValue.normalize t DBNull.Value) "DBNull"
            Expect.isNull (PgValue.normalize t (box (None: int option))) "None"
            Expect.isNull (PgValue.normalize t (box (ValueNone: int voption))) "ValueNone"
            Expect.equal (PgValue.normalize t (box (Some 5))) (box 5) "Some"
            Expect.equal (PgValue.normalize t (box (ValueSome 6))) (box 6) "ValueSome"
        }

        test "timestamptz values are converted to UTC" {
            let t = scalarType PgScalar.TimestampTz
            let instant = DateTimeOffset(2024, 1, 1, 12, 0, 0, TimeSpan.FromHours -5.0)
            let written = PgValue.normalize t (box instant) :?> DateTime
            Expect.equal written (DateTime(2024, 1, 1, 17, 0, 0, DateTimeKind.Utc)) "same instant"
            Expect.equal written.Kind DateTimeKind.Utc "UTC"
        }

        test "JSON elements are read as the column's type" {
            Expect.equal
                (PgValue.normalize (scalarType PgScalar.Int8) (json "9007199254740993"))
                (box 9007199254740993L)
                "int8"

            Expect.equal (PgValue.normalize (scalarType PgScalar.Numeric) (json "1.25")) (box 1.25m) "numeric"
            Expect.equal (PgValue.normalize (scalarType PgScalar.Text) (json "\"é\"")) (box "é") "text"

            Expect.equal
                (PgValue.normalize (scalarType PgScalar.Text) (json "12"))
                (box "12")
                "number as text"

            Expect.equal (PgValue.normalize (scalarType PgScalar.Bool) (json "false")) (box false) "bool"

            Expect.equal
                (PgValue.normalize (scalarType PgScalar.Jsonb) (json """{"a":1}"""))
                (box """{"a":1}""")
                "jsonb"

            Expect.equal (PgValue.normalize (scalarType PgScalar.Uuid) (json $"\"{guid}\"")) (box guid) "uuid"

            Expect.equal
                (PgValue.normalize (scalarType PgScalar.TimestampTz) (json "\"2024-01-02T03:04:05+02:00\""))
                (box (DateTime(2024, 1, 2, 1, 4, 5, DateTimeKind.Utc)))
                "timestamptz with an offset"

            Expect.equal
                (PgValue.normalize (scalarType PgScalar.TimestampTz) (json "\"2024-01-02T03:04:05\""))
                (box (DateTime(2024, 1, 2, 3, 4, 5, DateTimeKind.Utc)))
                "timestamptz without an offset is UTC"

            Expect.equal
                (PgValue.normalize (scalarType PgScalar.Timestamp) (json "\"2024-01-02T03:04:05+02:00\""))
                (box (DateTime(2024, 1, 2, 3, 4, 5, DateTimeKind.Unspecified)))
                "timestamp keeps the wall-clock time"

            Expect.isNull (PgValue.normalize (scalarType PgScalar.Int4) (json "null")) "JSON null"

            Expect.equal
                (PgValue.normalize (arrayOf PgScalar.Int4) (json "[1, null, 3]"))
                (box [| Nullable 1; Nullable(); Nullable 3 |])
                "array with a null"

            Expect.equal
                (PgValue.normalize (arrayOf PgScalar.Text) (json "[\"a\"]"))
                (box [| "a" |])
                "text array"
        }

        test "integers are converted to the column's integer type, and refused when they do not fit" {
            Expect.equal (PgValue.normalize (scalarType PgScalar.Int8) (box 5)) (box 5L) "int to bigint"
            Expect.equal (PgValue.normalize (scalarType PgScalar.Int2) (box 5L)) (box 5s) "bigint to smallint"
            Expect.equal (PgValue.normalize (scalarType PgScalar.Numeric) (box 5)) (box 5m) "int to numeric"

            Expect.equal
                (PgValue.normalize (scalarType PgScalar.Float8) (box 1.5f))
                (box 1.5)
                "real to double"

            Expect.throwsT<OverflowException>
                (fun () -> PgValue.normalize (scalarType PgScalar.Int4) (box Int64.MaxValue) |> ignore)
                "too big for integer"
        }

        test "any other value for a jsonb column is serialized" {
            let written =
                PgValue.normalize (scalarType PgScalar.Jsonb) (box {| a = 1; b = "x" |})

            Expect.equal written (box """{"a":1,"b":"x"}""") "System.Text.Json"
        }

        test "a JSON value of the wrong kind is refused, naming the kind and type" {
            let e =
                Expect.throwsC
                    (fun () -> PgValue.normalize (scalarType PgScalar.Int4) (json "\"x\"") |> ignore)
                    id

            Expect.stringContains e.Message "String" "the JSON kind"
            Expect.stringContains e.Message "Int4" "the column type"
        }

        test "catalog types are recognised, unsupported ones are not" {
            Expect.isSome (PgValue.tryType "int4" null "integer") "int4"
            Expect.isSome (PgValue.tryType "varchar" null "character varying(3)") "varchar"

            Expect.equal
                (PgValue.tryType "_uuid" "uuid" "uuid[]" |> Option.map _.IsArray)
                (Some true)
                "uuid[]"

            Expect.isNone (PgValue.tryType "money" null "money") "money"
            Expect.isNone (PgValue.tryType "_point" "point" "point[]") "point[]"
        }
    ]

let private roundTrips =
    testSequenced
    <| testList "round trip" [
        test "every supported scalar type, nulls and unicode come back as written by the Unnest method" {
            let table = tableOf scalarColumns
            let writer = writerFor (configFor table (fieldsOf scalarColumns) [ "id" ])
            Expect.equal writer.Method UpsertMethod.Unnest "no array field: one statement"
            let names = set (scalarColumns |> List.map _.Name)
            let given = full |> List.filter (fun (name, _, _) -> names.Contains name)
            writeNow writer [ valuesRow 1 given; nullsRow 2 scalarColumns ]
            let rows = readBackOf scalarColumns table
            expectRow rows[1] (readBackValues given) "all values"
            expectNulls rows[2] scalarColumns "nulls"
        }

        test "every supported type with arrays, nulls and unicode come back as written by the Copy method" {
            let table = roundTripTable ()
            let writer = writerFor (configFor table fields [ "id" ])
            Expect.equal writer.Method UpsertMethod.Copy "array fields: temp table and COPY"
            let options = box 3 :: (columns |> List.map (fun _ -> box (None: string option)))
            writeNow writer [ valuesRow 1 full; nullsRow 2 columns; Array.ofList options ]
            let rows = readBack table
            expectRow rows[1] (readBackValues full) "all values"
            expectNulls rows[2] columns "nulls"
            expectNulls rows[3] columns "None"
        }

        test "JSON objects come back as their values, read by column type" {
            let table = roundTripTable ()

            let writer =
                writerFor (
                    UpsertConfig.ofJson (PgConnection.ConnectionString(connectionString ())) table fields [
                        "id"
                    ]
                )

            let record =
                json (
                    """{"id": 1, "t": "x", "vc": "日本", "i2": 7, "i4": -1, "i8": 9007199254740993, "num": 1.25,
                        "f4": 0.5, "f8": 2.5, "b": false, "ts": "2024-01-02T03:04:05",
                        "tstz": "2024-01-02T03:04:05+02:00", "d": "2024-01-02", "u": """
                    + $"\"{guid}\""
                    + """, "j": {"nested": [1, 2]}, "js": [1,2], "by": "AP8B", "ai": [1, null, 3],
                        "at": ["a", "b"], "anum": [1.5], "atstz": ["2024-02-29T13:45:12.345Z"],"au": ["""
                    + $"\"{guid}\""
                    + """], "ajb": [{"x": 1}]}"""
                )

            let empty = json """{"id": 2, "t": null}"""
            writeNow writer [ record; empty ]
            let rows = readBack table

            expectRow
                rows[1]
                [
                    "t", box "x"
                    "vc", box "日本"
                    "i2", box 7s
                    "i4", box -1
                    "i8", box 9007199254740993L
                    "num", box 1.25m
                    "f4", box 0.5f
                    "f8", box 2.5
                    "b", box false
                    "ts", box (DateTime(2024, 1, 2, 3, 4, 5))
                    "tstz", box (DateTime(2024, 1, 2, 1, 4, 5, DateTimeKind.Utc))
                    "d", box (DateOnly(2024, 1, 2))
                    "u", box guid
                    "j", box """{"nested": [1, 2]}"""
                    "js", box "[1,2]"
                    "by", box [| 0uy; 255uy; 1uy |]
                    "ai", box [| Nullable 1; Nullable(); Nullable 3 |]
                    "at", box [| "a"; "b" |]
                    "anum", box [| 1.5m |]
                    "atstz", box [| utc |]
                    "au", box [| guid |]
                    "ajb", box [| """{"x": 1}""" |]
                ]
                "JSON"

            expectNulls rows[2] columns "missing and null properties"
        }

        test "dictionaries come back as their values" {
            let table = roundTripTable ()

            let writer =
                writerFor (
                    UpsertConfig.ofDictionaries
                        (PgConnection.ConnectionString(connectionString ()))
                        table
                        fields
                        [ "id" ]
                )

            let record = Dictionary<string, obj>()
            record["id"] <- box 1

            for name, given, _ in full do
                record[name] <- given

            writeNow writer [ record :> IDictionary<string, obj> ]
            let rows = readBack table
            expectRow rows[1] (readBackValues full) "dictionary"
        }

        test "integers of other widths are written to integer, numeric and double columns" {
            let table = freshTable ()

            execute
                $"CREATE TABLE {table} (id bigint PRIMARY KEY, i2 smallint, num numeric, f8 double precision)"

            let writer = writerFor (configFor table [ "id"; "i2"; "num"; "f8" ] [ "id" ])
            writeNow writer [ [| box 7; box 3L; box 42; box 2 |] ]
            let row = query $"SELECT id, i2, num, f8 FROM {table}" |> List.exactlyOne
            Expect.equal row [| box 7L; box 3s; box 42m; box 2.0 |] "converted"
        }

        test "a DateTime whose Kind does not fit the timestamp column faults the write, naming the column" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (id int PRIMARY KEY, ts timestamp, tstz timestamptz)"
            let writer = writerFor (configFor table [ "id"; "ts"; "tstz" ] [ "id" ])
            let utc = DateTime(2024, 1, 1, 0, 0, 0, DateTimeKind.Utc)
            let unspecified = DateTime(2024, 1, 1, 0, 0, 0, DateTimeKind.Unspecified)

            let e =
                faultOf "UTC to timestamp" (fun () ->
                    UpsertWriter.write writer [ [| box 1; box utc; box utc |] ])

            Expect.stringContains e.Message "\"ts\"" "timestamp refuses Kind Utc"

            let e =
                faultOf "Unspecified to timestamptz" (fun () ->
                    UpsertWriter.write writer [ [| box 1; box unspecified; box unspecified |] ])

            Expect.stringContains e.Message "\"tstz\"" "timestamptz refuses Kind Unspecified"
            Expect.equal (scalar<int64> $"SELECT count(*) FROM {table}") 0L "nothing written"
        }

        test "a value that does not fit its column faults the write, naming the column, with either method" {
            let table = roundTripTable ()

            for fields in [ [ "id"; "i4" ]; [ "id"; "i4"; "ai" ] ] do
                let writer = writerFor (configFor table fields [ "id" ])

                let values =
                    [| box 1; box "not a number"; box [| 1 |] |] |> Array.truncate fields.Length

                let e = faultOf "wrong type" (fun () -> UpsertWriter.write writer [ values ])
                Expect.stringContains e.Message "\"i4\"" $"{writer.Method}: names the column"
                Expect.stringContains e.Message "record 0" $"{writer.Method}: names the record"

                Expect.equal
                    (scalar<int64> $"SELECT count(*) FROM {table}")
                    0L
                    $"{writer.Method}: nothing written"
        }
    ]

let tests = testList "PgValue" [ normalization; roundTrips ]
