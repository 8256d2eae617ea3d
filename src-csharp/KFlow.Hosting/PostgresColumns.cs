// How a POCO or record maps to PostgreSQL columns: each public readable instance property is a
// column named in snake_case (CustomerId → customer_id), unless [Column("name")] names it or
// [NotMapped] leaves it out. The getters are compiled once per type.
using System;
using System.Collections.Generic;
using System.ComponentModel.DataAnnotations.Schema;
using System.Linq;
using System.Linq.Expressions;
using System.Reflection;
using System.Text;

namespace KFlow.Hosting;

/// <summary>The columns a row type maps to, by property name.</summary>
public static class PostgresColumns
{
    /// <summary>The column names of <typeparamref name="TRow"/>, in declaration order: each public
    /// readable instance property, named by <see cref="ColumnAttribute"/> or in snake_case; properties
    /// marked <see cref="NotMappedAttribute"/> are left out.</summary>
    public static IReadOnlyList<string> Of<TRow>() => Mapping<TRow>.Columns;

    /// <summary>A property name in snake_case: <c>CustomerId</c> → <c>customer_id</c>, <c>Foo</c> → <c>foo</c>.</summary>
    public static string SnakeCase(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var b = new StringBuilder(name.Length + 4);
        for (var i = 0; i < name.Length; i++)
        {
            var c = name[i];
            if (char.IsUpper(c))
            {
                var afterLower = i > 0 && (char.IsLower(name[i - 1]) || char.IsDigit(name[i - 1]));
                var beforeLower = i > 0 && i + 1 < name.Length && char.IsUpper(name[i - 1]) && char.IsLower(name[i + 1]);
                if (afterLower || beforeLower) b.Append('_');
                b.Append(char.ToLowerInvariant(c));
            }
            else
            {
                b.Append(c);
            }
        }

        return b.ToString();
    }

    internal static Func<TRow, object?[]> Row<TRow>() => Mapping<TRow>.Row;

    private static class Mapping<TRow>
    {
        private static readonly PropertyInfo[] Properties = typeof(TRow)
            .GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.CanRead && p.GetIndexParameters().Length == 0 && p.GetCustomAttribute<NotMappedAttribute>() is null)
            .OrderBy(p => p.MetadataToken)
            .ToArray();

        internal static readonly IReadOnlyList<string> Columns = Properties
            .Select(p => p.GetCustomAttribute<ColumnAttribute>()?.Name ?? SnakeCase(p.Name))
            .ToArray();

        internal static readonly Func<TRow, object?[]> Row = Compile();

        private static Func<TRow, object?[]> Compile()
        {
            var row = Expression.Parameter(typeof(TRow), "row");
            var values = Properties.Select(p =>
                (Expression)Expression.Convert(Expression.Property(row, p), typeof(object)));
            var array = Expression.NewArrayInit(typeof(object), values);
            return Expression.Lambda<Func<TRow, object?[]>>(array, row).Compile();
        }
    }
}
