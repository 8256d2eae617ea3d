// The one throwaway PostgreSQL server of this test project (started on first use, stopped at exit)
// and small helpers to make tables, run SQL and read rows back.
module KFlow.Postgres.Tests.TestDatabase

open System
open Npgsql
open KFlow.Testing
open KFlow.Postgres

/// The project's server: a throwaway cluster of its own (fault tests restart it, so KFLOW_TEST_PG is
/// not used). Started once; the tests using it are in testSequenced lists.
let private shared =
    lazy
        (Postgres.startWith {
            PostgresOptions.defaults with
                AllowExternalServer = false
        })

/// The running shared server.
let server () = shared.Value

/// The shared server's connection string.
let connectionString () = server().ConnectionString

/// A table name no other test uses.
let freshTable () =
    "sink_" + Guid.NewGuid().ToString("N").Substring(0, 12)

/// Runs SQL statements (no parameters) on the shared server.
let execute (sql: string) =
    use connection = new NpgsqlConnection(connectionString ())
    connection.Open()
    use command = new NpgsqlCommand(sql, connection)
    command.ExecuteNonQuery() |> ignore

/// The rows of a query, each as an array of values (DBNull for NULL).
let query (sql: string) : obj[] list =
    use connection = new NpgsqlConnection(connectionString ())
    connection.Open()
    use command = new NpgsqlCommand(sql, connection)
    use reader = command.ExecuteReader()

    [
        while reader.Read() do
            let values = Array.zeroCreate reader.FieldCount
            reader.GetValues values |> ignore
            values
    ]

/// The single value of a query.
let scalar<'t> (sql: string) : 't =
    match query sql with
    | [ [| value |] ] -> unbox<'t> value
    | rows -> failwith $"'{sql}' returned {rows.Length} rows, not one value"

/// A configuration for the shared server with obj[] records (the record is the row).
let configFor (table: string) (fields: string list) (keys: string list) : UpsertConfig<obj[]> =
    UpsertConfig.create (PgConnection.ConnectionString(connectionString ())) table fields keys id

/// Makes a writer, synchronously (tests).
let writerFor (config: UpsertConfig<'a>) : UpsertWriter<'a> =
    (UpsertWriter.create config).GetAwaiter().GetResult()

/// Writes a batch, synchronously (tests).
let writeNow (writer: UpsertWriter<'a>) (batch: 'a list) =
    (UpsertWriter.write writer batch).GetAwaiter().GetResult()

/// The exception a Task faulted with; fails the test if it succeeded.
let faultOf (what: string) (run: unit -> Threading.Tasks.Task) : exn =
    let outcome =
        try
            (run ()).GetAwaiter().GetResult()
            None
        with error ->
            Some error

    match outcome with
    | Some error -> error
    | None -> Expecto.Tests.failtestf "%s: expected the Task to fault, but it succeeded" what

/// A fresh table (k int PRIMARY KEY, v text, n bigint).
let keyValueTable () =
    let table = freshTable ()
    execute $"CREATE TABLE {table} (k int PRIMARY KEY, v text, n bigint)"
    table

/// A writer of the key-value table (fields k, v, n; key k).
let keyValueWriter (table: string) =
    writerFor (configFor table [ "k"; "v"; "n" ] [ "k" ])

/// A row of the key-value table.
let row (k: int) (v: string) (n: int64) = [| box k; box v; box n |]

/// The table's rows as (k, v, n), ordered by k.
let contents (table: string) =
    query $"SELECT k, v, n FROM {table} ORDER BY k"
    |> List.map (fun r -> unbox<int> r[0], string r[1], unbox<int64> r[2])

/// The table's row count.
let count (table: string) =
    scalar<int64> $"SELECT count(*) FROM {table}"
